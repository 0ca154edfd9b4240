//! Builds the eBPF object (`ebpf/ferry-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `src/datapath` can embed it: plain `cargo build` works,
//! xtask only orchestrates.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../../ebpf/ferry-ebpf");
    let common_dir = manifest_dir.join("../../ebpf/ferry-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    check_prerequisites()?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to ebpf/ferry-ebpf")?;
    aya_build::build_ebpf(
        [Package {
            name: "ferry-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// Fails early, with the fix, when the eBPF toolchain is incomplete.
fn check_prerequisites() -> anyhow::Result<()> {
    if env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref out) if out.status.success()) {
        bail!("bpf-linker is not installed: run `cargo xtask setup`");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("the nightly toolchain is missing: run `cargo xtask setup`")?;
    if !sysroot.status.success() {
        bail!("the nightly toolchain is missing: run `cargo xtask setup`");
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let core_src = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!("rust-src for the nightly toolchain is missing: run `cargo xtask setup`");
    }
    Ok(())
}
