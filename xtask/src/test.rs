//! `cargo xtask test`: setup, build, lint, then every test. Privileged
//! tests build their own namespaces (see tests/integration).

use std::process::Command;

use crate::{build, require_root, run_cmd, setup, step, workspace_root};

pub fn run(cargo_args: &[String]) -> anyhow::Result<()> {
    require_root("test")?;
    setup::run()?;
    build::run()?;
    let root = workspace_root();
    step("lint: cargo fmt --check");
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    step("lint: cargo clippy -D warnings");
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The workspace clippy above sees the eBPF crate built for the host,
    // where its modules are compiled out; its real target is linted here.
    step("lint: cargo clippy -D warnings on the eBPF programs (bpfel-unknown-none)");
    run_cmd(
        Command::new("cargo")
            .current_dir(root.join("ebpf/ferry-ebpf"))
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
            ])
            .arg(root.join("target/ebpf-clippy"))
            .args(["--", "-D", "warnings"]),
    )?;
    step("test: unit and integration tests");
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .env("FERRY_BIN_DIR", build::bin_dir())
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "ferry-ebpf",
                "--no-fail-fast",
            ])
            .args(cargo_args),
    )?;
    // Benchmarks are not tests, but a one-second round keeps them working.
    step("test: benchmark smoke run (c2c 1 s, start; the numbers are not judged)");
    let exe = std::env::current_exe()?;
    run_cmd(Command::new(&exe).args([
        "bench",
        "c2c",
        "start",
        "--seconds",
        "1",
        "--reps",
        "1",
        "--rr-count",
        "200",
    ]))?;
    // The soak judges: a short round fails the suite on any leak.
    step("test: soak (100 containers with traffic, then the leak check)");
    // The fuzz targets' properties (ferry::invariants) ran in the unit
    // tests above on every kept input; generating new ones is `cargo xtask
    // fuzz`, whose sanitizer build of the whole daemon takes longer than
    // the rest of the suite.
    run_cmd(Command::new(&exe).args(["soak", "--containers", "100"]))
}
