//! `cargo xtask bench [SCENARIO...]`: every variant of a scenario measured
//! side by side in one run, interleaved (A B C A B C ...), medians and
//! spread reported, with ratios. Never a pass/fail: numbers only.

mod c2c;
mod cross_host;
mod ct_flood;
mod ct_scale;
mod docker;
mod egress;
mod engine;
mod http;
mod podman;
mod port_scale;
mod profile;
mod pull;
mod report;
mod start;
mod tools;

pub use http::quick_compare;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;
use clap::Args;
use ferry_integration::{Background, in_netns, join_cgroup, use_bin_dir};

use crate::{build, capture, require_root, setup, step, workspace_root};

#[derive(Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all). Known: c2c, cross-host, publish-http, podman-http,
    /// local-http, egress, start, port-scale, conntrack-scale, ct-flood,
    /// publish-profile, pull.
    pub scenarios: Vec<String>,
    /// Seconds per throughput sample.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Rounds of the interleaved variants.
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// publish-http: only these variants (comma-separated names, e.g.
    /// host,ferry,ferry-macvlan,veth-routed); default: all.
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Round trips per latency sample.
    #[arg(long, default_value_t = 20_000)]
    pub rr_count: u32,
}

const SCENARIOS: &[&str] = &[
    "c2c",
    "cross-host",
    "publish-http",
    "podman-http",
    "local-http",
    "egress",
    "start",
    "port-scale",
    "conntrack-scale",
    "ct-flood",
    "publish-profile",
    "pull",
];

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    require_root("bench")?;
    setup::run()?;
    build::run()?;
    use_bin_dir(build::bin_dir());
    let selected = crate::select(&args.scenarios, SCENARIOS, "scenario")?;
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let machine = machine_summary();
    step(&format!("bench: {machine}"));
    let mut report = report::Report::new(machine);
    for s in selected {
        let section = match s {
            "c2c" => c2c::run(args)?,
            "cross-host" => cross_host::run(args)?,
            "publish-http" => http::publish(args, &out_dir)?,
            "podman-http" => podman::run(args, &out_dir)?,
            "local-http" => http::local(args, &out_dir)?,
            "egress" => egress::run(args)?,
            "start" => start::run(args, &out_dir)?,
            "port-scale" => port_scale::run(args, &out_dir)?,
            "conntrack-scale" => ct_scale::run(args, &out_dir)?,
            "ct-flood" => ct_flood::run(args, &out_dir)?,
            "publish-profile" => profile::run(args, &out_dir)?,
            "pull" => pull::run(args)?,
            _ => unreachable!("checked above"),
        };
        report.add(section);
    }
    report.write(&out_dir, &versions())
}

/// The version line of every program the scenarios run, for the report:
/// (what, its own words). Docker's comes from the unpacked packages when a
/// scenario fetched them. Programs that are missing are left out.
fn versions() -> Vec<(&'static str, String)> {
    let first_line = |program: &Path, args: &[&str]| -> Option<String> {
        let out = Command::new(program).args(args).output().ok()?;
        let text = [out.stdout, out.stderr].concat();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    let docker_root = workspace_root().join("target/tools/docker-root");
    let mut programs: Vec<(&'static str, PathBuf, &[&str])> = vec![
        ("git", "git".into(), &["describe", "--always", "--dirty"]),
        ("nginx", "nginx".into(), &["-v"]),
        ("wrk", "wrk".into(), &["-v"]),
        ("iperf3", "iperf3".into(), &["--version"]),
        ("iptables", "iptables".into(), &["--version"]),
        ("perf", "perf".into(), &["--version"]),
    ];
    let dockerd = docker_root.join("usr/sbin/dockerd");
    if dockerd.exists() {
        programs.push(("dockerd", dockerd, &["--version"]));
    }
    programs
        .into_iter()
        .filter_map(|(what, program, args)| {
            let line = first_line(&program, args)?;
            Some((if what == "git" { "ferry (git)" } else { what }, line))
        })
        .collect()
}

fn machine_summary() -> String {
    let kernel = capture(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("kernel {}, {cpus} x {cpu}", kernel.trim())
}

/// `program args` inside the namespace at `ns`, pinned to `cpu` if given,
/// in the cgroup2 directory `cgroup` if given (where socket hooks act).
pub fn bench_cmd(
    ns: &Path,
    cpu: Option<u32>,
    cgroup: Option<&Path>,
    program: &str,
    args: &[&str],
) -> Command {
    let mut cmd = match cpu {
        Some(cpu) => {
            let cpu = cpu.to_string();
            let mut full = vec!["-c", cpu.as_str(), program];
            full.extend_from_slice(args);
            in_netns(ns, "taskset", &full)
        }
        None => in_netns(ns, program, args),
    };
    if let Some(cgroup) = cgroup {
        join_cgroup(&mut cmd, cgroup);
    }
    cmd
}

/// Starts `program args` inside the namespace at `ns`, pinned to `cpu`, as
/// a process group the returned handle ends (SIGTERM first, so nginx stops
/// its workers).
pub fn spawn_in(ns: &Path, cpu: u32, program: &str, args: &[&str]) -> Background {
    spawn(bench_cmd(ns, Some(cpu), None, program, args))
}

/// Starts a prepared command as an ended-on-drop process group.
pub fn spawn(mut cmd: Command) -> Background {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Background::spawn(cmd).with_grace(std::time::Duration::from_secs(2))
}

/// Runs `program args` to completion inside `ns`, pinned to `cpu`.
pub fn capture_in(ns: &Path, cpu: u32, program: &str, args: &[&str]) -> anyhow::Result<String> {
    capture(&mut bench_cmd(ns, Some(cpu), None, program, args))
}

/// This xtask binary, to run its hidden rr-server / rr-client inside
/// namespaces.
pub fn self_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("current_exe")
}

/// TCP throughput in Gbit/s of one iperf3 run from the namespace at
/// `client_ns` (on CPU 1) to the server at `server_ip`; with `reverse` the
/// server sends (a download).
pub fn iperf3_gbits(
    client_ns: &Path,
    server_ip: &str,
    seconds: u32,
    reverse: bool,
) -> anyhow::Result<f64> {
    let secs = seconds.to_string();
    let mut args = vec!["-c", server_ip, "-t", &secs, "-J"];
    if reverse {
        args.push("-R");
    }
    let out = capture_in(client_ns, 1, "iperf3", &args)?;
    let j: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .context("iperf3 reported no throughput")
}

/// Median, min and max of some samples.
pub fn spread(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// A kernel sysctl (path below /proc/sys) switched to 1 for a scenario and
/// put back as it was when dropped.
pub struct KernelSwitch {
    path: PathBuf,
    before: String,
}

impl KernelSwitch {
    pub fn on(sysctl: &str) -> Self {
        let path = Path::new("/proc/sys").join(sysctl);
        let before = std::fs::read_to_string(&path).unwrap_or_else(|_| "0".into());
        let _ = std::fs::write(&path, "1");
        Self {
            path,
            before: before.trim().to_owned(),
        }
    }
}

impl Drop for KernelSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.before);
    }
}

/// `bpftool -j prog show pinned PATH`: (run_time_ns, run_cnt), counted
/// while `kernel/bpf_stats_enabled` is on.
pub fn prog_stats(path: &Path) -> (u64, u64) {
    let out = capture(
        Command::new("bpftool")
            .args(["-j", "prog", "show", "pinned"])
            .arg(path),
    )
    .ok()
    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    .unwrap_or_default();
    (
        out["run_time_ns"].as_u64().unwrap_or(0),
        out["run_cnt"].as_u64().unwrap_or(0),
    )
}
