//! `cargo xtask setup`: installs the prerequisites idempotently, checking
//! each first so that a prepared machine needs neither root nor network.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{capture, is_root, run_cmd, step};

/// Debian packages: the eBPF toolchain's LLVM, and the tools the tests,
/// demo and benchmarks drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // seccomp profiles are compiled with libseccomp.
    "libseccomp-dev",
    "build-essential",
    "pkg-config",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "iptables",
    "nftables",
    "iperf3",
    "socat",
    "curl",
    "wrk",
    "nginx-light",
    "util-linux",
    "tcpdump",
    "ethtool",
    // A static shell for the tests' `--rootfs` image, and the interpreter
    // the runtime tests' workloads use.
    "busybox-static",
    "python3",
    // SYN floods with random sources for the conntrack tests.
    "hping3",
    // A real CNI runtime for ferry-cni's tests (runc: crun refuses hybrid
    // cgroups).
    "podman",
    "runc",
    "containernetworking-plugins",
    // A real registry for `ferry pull`'s tests, and what pushes to it.
    "docker-registry",
    "skopeo",
    // htpasswd: the bcrypt password file of a registry that wants a login.
    "apache2-utils",
    // The cluster store of `ferryd --cluster` and its tests (etcdctl for
    // their health checks); protoc builds the etcd client's protocol.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    nightly_components()?;
    bpf_linker()?;
    step("setup: everything is in place");
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("setup: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        bail!("missing packages {missing:?}: run cargo xtask setup as root to install them");
    }
    step(&format!("setup: installing {}", missing.join(" ")));
    // llvm-22-dev comes from bookworm-security: refresh the index first.
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .context("apt-get install failed")
}

/// What the nightly toolchain needs: the standard library's source (the
/// eBPF programs build `core` for their target) and clippy (they are
/// linted for that target too).
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

fn nightly_components() -> anyhow::Result<()> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("setup: installing the nightly toolchain");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        for c in NIGHTLY_COMPONENTS {
            install.args(["--component", c]);
        }
        return run_cmd(&mut install);
    }
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    for c in NIGHTLY_COMPONENTS {
        if installed.lines().any(|l| l.starts_with(c)) {
            step(&format!("setup: nightly {c} present"));
            continue;
        }
        step(&format!("setup: adding {c} to nightly"));
        run_cmd(Command::new("rustup").args(["component", "add", c, "--toolchain", "nightly"]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Ok(version) = capture(Command::new("bpf-linker").arg("--version"))
        && version.contains(BPF_LINKER_VERSION)
    {
        step("setup: bpf-linker present");
        return Ok(());
    }
    step(&format!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
    ));
    run_cmd(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}
