//! `cargo xtask build`: the eBPF object (via userspace/ferry-net/build.rs) and
//! the release binaries with it embedded.

use std::{path::PathBuf, process::Command};

use crate::{run_cmd, step, workspace_root};

pub fn run() -> anyhow::Result<()> {
    step("build: ferryd, ferry and ferry-cni (release, eBPF object embedded)");
    run_cmd(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "ferry",
        "--package",
        "ferry-cni",
        "--bins",
    ]))
}

/// Where `build` puts the binaries.
pub fn bin_dir() -> PathBuf {
    workspace_root().join("target/release")
}
