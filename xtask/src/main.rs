//! ferry's task runner. `cargo xtask demo` and `cargo xtask test` are the
//! README's two commands; both install what they need first.

mod bench;
mod build;
mod demo;
mod fuzz;
mod rr;
mod setup;
mod soak;
mod test;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ferry's tasks: setup, build, demo, test, bench")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (Debian packages, nightly rust-src and clippy,
    /// bpf-linker); skips what is present.
    Setup,
    /// Build the eBPF object and the binaries (release).
    Build,
    /// Set up, build, start ferryd in a sandbox namespace, run two
    /// containers, show them talking and the counters moving, clean up.
    Demo,
    /// Set up, build, lint, and run every test (unit and privileged
    /// integration tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Benchmarks, side by side in one run: `cargo xtask bench [c2c]`.
    Bench(bench::BenchArgs),
    /// Container churn with traffic, then a leak check (fails on leaks).
    Soak(soak::SoakArgs),
    /// cargo-fuzz targets (publish specs, API requests) for N seconds each.
    Fuzz(fuzz::FuzzArgs),
    /// Request/response server for benchmarks (runs inside namespaces).
    #[command(hide = true)]
    RrServer { port: u16 },
    /// Request/response client for benchmarks (runs inside namespaces).
    #[command(hide = true)]
    RrClient { addr: String, port: u16, count: u32 },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.task {
        Task::Setup => setup::run(),
        Task::Build => build::run(),
        Task::Demo => demo::run(),
        Task::Test { cargo_args } => test::run(&cargo_args),
        Task::Bench(b) => bench::run(&b),
        Task::Soak(s) => soak::run(&s),
        Task::Fuzz(f) => fuzz::run(&f),
        Task::RrServer { port } => rr::serve(port),
        Task::RrClient { addr, port, count } => rr::client(&addr, port, count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `given` names (all of `known` if none), each checked against
/// `known`; an unknown one is an error naming the `what` and the choices.
fn select<'a>(given: &'a [String], known: &[&'a str], what: &str) -> anyhow::Result<Vec<&'a str>> {
    if given.is_empty() {
        return Ok(known.to_vec());
    }
    given
        .iter()
        .map(|g| match known.iter().find(|k| **k == g.as_str()) {
            Some(k) => Ok(*k),
            None => bail!("unknown {what} {g:?}; known: {}", known.join(", ")),
        })
        .collect()
}

/// Prints a step so long tasks show progress.
fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

/// Runs a command, streaming its output; fails if it fails.
fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails if it fails.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask {task} must run as root (it creates namespaces, veths and BPF programs)"
        );
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_owned)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}
