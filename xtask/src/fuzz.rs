//! `cargo xtask fuzz [TARGET...] [--seconds N]`: the cargo-fuzz targets in
//! tests/fuzz (the publish-spec parser, the API request decoding and
//! checks), each run for N seconds from its seeds. A crash fails the task
//! and leaves the input in tests/fuzz/artifacts/<target>/.

use std::process::Command;

use clap::Args;

use crate::{run_cmd, setup, step, workspace_root};

const TARGETS: &[&str] = &["publish_spec", "api_request"];

#[derive(Args)]
pub struct FuzzArgs {
    /// Targets to run (default: all). Known: publish_spec, api_request.
    pub targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
}

/// Installs cargo-fuzz unless it is there.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        step("fuzz: cargo-fuzz present");
        return Ok(());
    }
    step("fuzz: installing cargo-fuzz");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    setup::run()?;
    ensure_cargo_fuzz()?;
    let selected = crate::select(&args.targets, TARGETS, "fuzz target")?;
    let dir = workspace_root().join("tests/fuzz");
    for target in selected {
        step(&format!("fuzz: {target} for {} s", args.seconds));
        // New inputs go to the first corpus directory (not committed); the
        // seeds are read only.
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        run_cmd(
            Command::new("cargo")
                .current_dir(&dir)
                .args(["+nightly", "fuzz", "run", "--fuzz-dir", ".", target])
                .arg(&corpus)
                .arg(dir.join("seeds").join(target))
                .args([
                    "--",
                    &format!("-max_total_time={}", args.seconds),
                    "-print_final_stats=1",
                ]),
        )?;
    }
    Ok(())
}
