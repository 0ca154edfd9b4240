//! publish-profile: where the CPU goes under publish-http load, the host
//! network against ferry (veth and macvlan), to explain the gap
//! publish-http measures.
//! System-wide `perf record -e cpu-clock` (no hardware PMU is needed)
//! while wrk runs (50 connections, keep-alive and one connection per
//! request), the share of the samples per kernel and user symbol, the CPU
//! time per request (busy samples over requests: what a noisy machine's
//! throughput hides), and for ferry each program's run time per packet and
//! packets per request from bpf_stats. BPF programs show in perf by name with
//! `net/core/bpf_jit_kallsyms` on; both switches are on for the scenario
//! only.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::Context as _;
use ferry_integration::wait_until;
use serde_json::json;

use super::{
    BenchArgs, KernelSwitch,
    http::{docroot, ferry_target, host_target, macvlan_target, wrk},
    prog_stats,
    report::{Section, Table},
    spawn,
};
use crate::{capture, step};

const CONNECTIONS: u32 = 50;
/// Symbols listed per load: the largest shares over both variants.
const TOP: usize = 15;
const PROGRAMS: [&str; 4] = [
    "uplink_ingress",
    "uplink_egress",
    "from_container",
    "to_container",
];

/// Share of the samples (percent) the CPUs spent idle.
fn idle_share(shares: &BTreeMap<String, f64>) -> f64 {
    shares
        .iter()
        .filter(|(sym, _)| sym.contains("idle") || sym.contains("halt"))
        .map(|(_, pct)| pct)
        .sum()
}

/// Share of the samples (percent) per symbol in a perf data file.
fn shares(data: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let out = capture(
        Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", "sym", "-i"])
            .arg(data),
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            // "[k] symbol" or "[.] symbol"
            let sym = rest
                .trim()
                .split_once(' ')
                .map_or(rest.trim(), |(_, s)| s.trim());
            Some((sym.to_owned(), pct))
        })
        .collect())
}

pub fn run(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    let root = docroot(out_dir)?;
    step("bench publish-profile: host network and ferry under perf");
    let _stats = KernelSwitch::on("kernel/bpf_stats_enabled");
    let _names = KernelSwitch::on("net/core/bpf_jit_kallsyms");
    let targets = [
        host_target(out_dir, &root)?,
        ferry_target(out_dir, &root, "ferry", "auto")?,
        macvlan_target(out_dir, &root)?,
    ];
    for t in &targets {
        let ready = wait_until(std::time::Duration::from_secs(10), || {
            wrk(t, 1, true, 1).is_ok_and(|r| r["rps"].as_f64().is_some_and(|v| v > 0.0))
        });
        anyhow::ensure!(ready, "publish-profile: {} does not answer", t.name);
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let mut tables = Vec::new();
    let mut raw = Vec::new();
    for close in [false, true] {
        let mode = if close { "close" } else { "keep-alive" };
        let mut by_variant: Vec<(&str, f64, BTreeMap<String, f64>)> = Vec::new();
        let mut programs = Table::new(
            format!("publish-profile, {mode}: ferry's programs (bpf_stats)"),
            &[
                "variant",
                "program",
                "ns/packet",
                "packets/request",
                "ns/request",
            ],
        );
        for t in &targets {
            step(&format!(
                "bench publish-profile: {} {mode} under perf",
                t.name
            ));
            let data = out_dir.join(format!("perf-{}-{mode}.data", t.name));
            let seconds = args.seconds.to_string();
            let mut record = Command::new("perf");
            record.args([
                "record",
                "-a",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "1999",
                "-o",
                data.to_str().context("utf-8 path")?,
                "--",
                "sleep",
                &seconds,
            ]);
            let mut perf = spawn(record);
            let pins = t._world.as_ref().map(|w| w.pin_dir.join("progs"));
            let stats = || -> Vec<(u64, u64)> {
                pins.as_ref().map_or_else(Vec::new, |pins| {
                    PROGRAMS.iter().map(|p| prog_stats(&pins.join(p))).collect()
                })
            };
            let before = stats();
            let r = wrk(t, CONNECTIONS, close, args.seconds)?;
            let after = stats();
            let _ = perf.child().wait();
            let rps = r["rps"].as_f64().unwrap_or(0.0);
            let requests = rps * f64::from(args.seconds);
            for (i, p) in PROGRAMS.iter().enumerate().take(after.len()) {
                let (ns, cnt) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
                if cnt == 0 {
                    continue;
                }
                let per_packet = ns as f64 / cnt as f64;
                let per_request = if requests > 0.0 {
                    cnt as f64 / requests
                } else {
                    0.0
                };
                programs.row(vec![
                    t.name.into(),
                    (*p).into(),
                    format!("{per_packet:.0}"),
                    format!("{per_request:.2}"),
                    format!("{:.0}", per_packet * per_request),
                ]);
                raw.push(json!({ "mode": mode, "variant": t.name, "program": p, "run_time_ns": ns, "run_cnt": cnt, "requests": requests }));
            }
            let s = shares(&data)?;
            raw.push(json!({ "mode": mode, "variant": t.name, "rps": rps, "shares": s }));
            by_variant.push((t.name, rps, s));
        }
        let mut symbols: Vec<(String, f64)> = BTreeMap::<String, f64>::new()
            .into_iter()
            .chain(
                by_variant
                    .iter()
                    .flat_map(|(_, _, s)| s.iter().map(|(k, v)| (k.clone(), *v))),
            )
            .fold(BTreeMap::<String, f64>::new(), |mut m, (k, v)| {
                let e = m.entry(k).or_default();
                *e = e.max(v);
                m
            })
            .into_iter()
            .collect();
        symbols.sort_by(|a, b| b.1.total_cmp(&a.1));
        let rps: Vec<String> = by_variant
            .iter()
            .map(|(n, r, s)| {
                let busy = (100.0 - idle_share(s)) / 100.0 * cpus * f64::from(args.seconds);
                let per_request = if *r > 0.0 {
                    busy * 1e6 / (r * f64::from(args.seconds))
                } else {
                    0.0
                };
                format!("{n} {r:.0} req/s, {per_request:.1} CPU-us/request")
            })
            .collect();
        let mut table = Table::new(
            format!(
                "publish-profile, {mode}: % of CPU samples per symbol ({})",
                rps.join(", ")
            ),
            &["symbol", "host %", "ferry %", "ferry-macvlan %"],
        );
        for (sym, _) in symbols.iter().take(TOP) {
            let mut row = vec![sym.clone()];
            row.extend(
                by_variant
                    .iter()
                    .map(|(_, _, s)| format!("{:.2}", s.get(sym).copied().unwrap_or(0.0))),
            );
            table.row(row);
        }
        tables.push(table);
        tables.push(programs);
    }
    Ok(Section {
        scenario: "publish-profile".into(),
        method: format!(
            "nginx on the host network and in a ferry container on a veth and on a macvlan \
             network (as publish-http), wrk with \
             {CONNECTIONS} connections for {} s per load, under system-wide `perf record -e \
             cpu-clock -F 1999` (both CPUs: nginx, wrk and the softirqs between them). Shares \
             are of all samples, idle included; CPU-us/request is the busy (not idle) share of \
             both CPUs' time over the requests served. ferry's program costs are bpf_stats run time \
             over run count; packets/request counts every packet a program saw per request.",
            args.seconds
        ),
        tables,
        charts: Vec::new(),
        samples: json!(raw),
    })
}
