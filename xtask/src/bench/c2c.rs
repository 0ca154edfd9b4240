//! c2c: two containers on one host. Variants, measured side by side:
//! - ferry: two ferry containers, bpf_redirect_peer between host veths;
//! - bridge: two namespaces on a Linux bridge as Docker wires them (see
//!   `docker.rs`);
//! - veth: one veth pair joining the two namespaces directly, the floor for
//!   any veth-based design.
//!
//! Per sample: iperf3 TCP throughput, and 64-byte TCP request/response
//! latency. Server pinned to CPU 0, client to CPU 1.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use ferry_integration::{TempNetns, World, unique_name};
use serde_json::{Value, json};

use super::{
    BenchArgs, capture_in,
    docker::DockerBridge,
    iperf3_gbits,
    report::{Chart, Section, Table},
    self_exe, spawn_in, spread,
};
use crate::step;

/// One way to join two endpoints; the fields keep its namespaces alive.
pub struct Variant {
    pub name: &'static str,
    pub client_ns: PathBuf,
    pub server_ns: PathBuf,
    pub server_ip: String,
    pub _world: Option<World>,
    pub _netns: Vec<TempNetns>,
}

fn ferry_variant() -> Variant {
    let world = World::new();
    let a = world.run("bench-a", &["sleep", "infinity"]);
    let b = world.run("bench-b", &["sleep", "infinity"]);
    Variant {
        name: "ferry",
        client_ns: a.netns,
        server_ns: b.netns,
        server_ip: b.ip,
        _world: Some(world),
        _netns: Vec::new(),
    }
}

fn bridge_variant() -> anyhow::Result<Variant> {
    let mut bridge = DockerBridge::new("10.98.0", 2)?;
    let server = bridge.containers.remove(1);
    let client = bridge.containers.remove(0);
    Ok(Variant {
        name: "bridge",
        client_ns: client.path(),
        server_ns: server.path(),
        server_ip: bridge.ips[1].clone(),
        _world: None,
        _netns: vec![client, server, bridge.host],
    })
}

fn veth_variant() -> Variant {
    let tag = unique_name("fyv");
    let a = TempNetns::new(&format!("{tag}-a"));
    let b = TempNetns::new(&format!("{tag}-b"));
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "10.97.0.2/24", "dev", "eth0"]);
    b.ip(&["addr", "add", "10.97.0.3/24", "dev", "eth0"]);
    a.ip(&["link", "set", "eth0", "up"]);
    b.ip(&["link", "set", "eth0", "up"]);
    Variant {
        name: "veth",
        client_ns: a.path(),
        server_ns: b.path(),
        server_ip: "10.97.0.3".into(),
        _world: None,
        _netns: vec![a, b],
    }
}

fn rr(v: &Variant, count: u32) -> anyhow::Result<Value> {
    let exe = self_exe()?;
    let exe = exe.to_str().context("utf-8 path")?;
    let out = capture_in(
        &v.client_ns,
        1,
        exe,
        &["rr-client", &v.server_ip, "7777", &count.to_string()],
    )?;
    serde_json::from_str(out.trim()).context("rr-client JSON")
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Section> {
    step("bench c2c: building ferry, bridge and veth topologies");
    let variants = vec![ferry_variant(), bridge_variant()?, veth_variant()];
    let method = format!(
        "Two containers on one host: ferry (bpf_redirect_peer between host veths), bridge \
         (two namespaces on a Linux bridge wired as Docker does) and veth (one veth pair \
         joining the namespaces, the floor for any veth design). Per round: iperf3 TCP for \
         {} s and {} 64-byte TCP request/response round trips; server on CPU 0, client on \
         CPU 1.",
        args.seconds, args.rr_count
    );
    measure(
        args,
        "c2c",
        method,
        &variants,
        &[("ferry", &["bridge", "veth"])],
    )
}

/// Measures `variants` side by side, interleaved: iperf3 throughput and
/// request/response latency per round, medians, and the ratios of
/// each variant of `ratios` to each it is set against (one table per
/// variant).
pub fn measure(
    args: &BenchArgs,
    scenario: &str,
    method: String,
    variants: &[Variant],
    ratios: &[(&str, &[&str])],
) -> anyhow::Result<Section> {
    let exe = self_exe()?;
    let exe = exe.to_str().context("utf-8 path")?.to_owned();
    let mut servers = Vec::new();
    for v in variants {
        servers.push(spawn_in(&v.server_ns, 0, "iperf3", &["-s"]));
        servers.push(spawn_in(&v.server_ns, 0, &exe, &["rr-server", "7777"]));
    }
    // Give the servers a moment, and prove each path works before timing it.
    for v in variants {
        rr(v, 100).with_context(|| format!("{}: no request/response path", v.name))?;
    }

    let mut gbits: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut p50: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut p99: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut raw = Vec::new();
    for rep in 1..=args.reps {
        for v in variants {
            step(&format!(
                "bench {scenario}: round {rep}/{}: {}",
                args.reps, v.name
            ));
            let g = iperf3_gbits(&v.client_ns, &v.server_ip, args.seconds, false)?;
            let r = rr(v, args.rr_count)?;
            gbits.entry(v.name).or_default().push(g);
            p50.entry(v.name)
                .or_default()
                .push(r["p50_us"].as_f64().unwrap_or(0.0));
            p99.entry(v.name)
                .or_default()
                .push(r["p99_us"].as_f64().unwrap_or(0.0));
            raw.push(json!({ "variant": v.name, "round": rep, "gbits": g, "rr": r }));
        }
    }
    drop(servers);

    let med =
        |m: &BTreeMap<&str, Vec<f64>>, k: &str| spread(m.get(k).map_or(&[][..], Vec::as_slice));
    let mut table = Table::new(
        format!(
            "{scenario}: {} rounds, {} s of iperf3 and {} round trips each",
            args.reps, args.seconds, args.rr_count
        ),
        &[
            "variant",
            "TCP Gbit/s med [min-max]",
            "RR p50 us med [min-max]",
            "RR p99 us",
        ],
    );
    for v in variants {
        let (g, gl, gh) = med(&gbits, v.name);
        let (l, ll, lh) = med(&p50, v.name);
        let (t, _, _) = med(&p99, v.name);
        table.row(vec![
            v.name.to_owned(),
            format!("{g:.2} [{gl:.2}-{gh:.2}]"),
            format!("{l:.1} [{ll:.1}-{lh:.1}]"),
            format!("{t:.1}"),
        ]);
    }
    let mut tables = vec![table];
    for &(ours, against) in ratios {
        let (fg, _, _) = med(&gbits, ours);
        let (fl, _, _) = med(&p50, ours);
        let mut ratios = Table::new(
            format!("{scenario} ratios (above 1.00x favours {ours})"),
            &[
                "vs",
                &format!("throughput {ours}/vs"),
                &format!("latency p50 vs/{ours}"),
            ],
        );
        for &other in against {
            let (g, _, _) = med(&gbits, other);
            let (l, _, _) = med(&p50, other);
            ratios.row(vec![
                other.to_owned(),
                format!("{:.2}x", fg / g),
                format!("{:.2}x", l / fl),
            ]);
        }
        tables.push(ratios);
    }
    let bars = |m: &BTreeMap<&str, Vec<f64>>| -> Vec<(String, f64)> {
        variants
            .iter()
            .map(|v| (v.name.to_owned(), med(m, v.name).0))
            .collect()
    };
    Ok(Section {
        scenario: scenario.into(),
        method,
        tables,
        charts: vec![
            Chart {
                file: format!("{scenario}-throughput"),
                title: format!("{scenario}: TCP throughput (median)"),
                unit: "Gbit/s".into(),
                groups: vec![("iperf3".into(), bars(&gbits))],
            },
            Chart {
                file: format!("{scenario}-latency"),
                title: format!("{scenario}: request/response latency (median of rounds)"),
                unit: "microseconds".into(),
                groups: vec![("p50".into(), bars(&p50)), ("p99".into(), bars(&p99))],
            },
        ],
        samples: json!(raw),
    })
}
