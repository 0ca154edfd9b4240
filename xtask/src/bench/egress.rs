//! egress: a container downloading from a server on the outside (the
//! client namespace) through outbound NAT. Variants, side by side:
//! - host: the download from a plain namespace over a veth (the limit);
//! - ferry: from a ferry container, masqueraded in eBPF;
//! - docker: from a namespace on a Docker-style bridge, MASQUERADE by
//!   iptables with conntrack.
//!
//! iperf3 -R (the server sends), server on CPU 0, client on CPU 1.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use ferry_integration::{Background, CLIENT_IP, TempNetns, World, unique_name};
use serde_json::json;

use super::{
    BenchArgs,
    docker::DockerBridge,
    http::client_of,
    iperf3_gbits,
    report::{Chart, Section, Table},
    spawn_in, spread,
};
use crate::step;

/// Where the download runs, and the server it pulls from; the remaining
/// fields keep the namespaces and the server alive.
struct Variant {
    name: &'static str,
    downloader: PathBuf,
    server_ip: String,
    _server: Background,
    _world: Option<World>,
    _netns: Vec<TempNetns>,
}

fn host_variant() -> Variant {
    let host = TempNetns::new(&unique_name("fyeh"));
    let client = client_of(&host, "10.204.0");
    let server = spawn_in(&client.path(), 0, "iperf3", &["-s"]);
    Variant {
        name: "host",
        downloader: host.path(),
        server_ip: "10.204.0.2".into(),
        _server: server,
        _world: None,
        _netns: vec![client, host],
    }
}

/// A ferry container; `xdp` is ferryd's `--xdp-prefilter` (`auto` leaves
/// it off on this veth uplink).
fn ferry_variant(name: &'static str, xdp: &str) -> Variant {
    let world = World::with_ferryd_args(&["--xdp-prefilter", xdp]);
    let c = world.run("downloader", &["sleep", "infinity"]);
    let server = spawn_in(&world.client_ns_path(), 0, "iperf3", &["-s"]);
    Variant {
        name,
        downloader: c.netns,
        server_ip: CLIENT_IP.into(),
        _server: server,
        _world: Some(world),
        _netns: Vec::new(),
    }
}

fn docker_variant() -> anyhow::Result<Variant> {
    let mut bridge = DockerBridge::new("172.31.0", 1)?;
    let client = client_of(&bridge.host, "10.205.0");
    let server = spawn_in(&client.path(), 0, "iperf3", &["-s"]);
    let container = bridge.containers.remove(0);
    Ok(Variant {
        name: "docker",
        downloader: container.path(),
        server_ip: "10.205.0.2".into(),
        _server: server,
        _world: None,
        _netns: vec![container, client, bridge.host],
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Section> {
    step("bench egress: host, ferry masquerade and Docker MASQUERADE downloads");
    let variants = vec![
        host_variant(),
        ferry_variant("ferry", "auto"),
        ferry_variant("ferry-xdp", "on"),
        docker_variant()?,
    ];
    // Prove each path (and give the servers a moment) before timing it.
    for v in &variants {
        iperf3_gbits(&v.downloader, &v.server_ip, 1, true)
            .with_context(|| format!("{}: no download path", v.name))?;
    }
    let mut gbits: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut raw = Vec::new();
    for rep in 1..=args.reps {
        for v in &variants {
            step(&format!(
                "bench egress: round {rep}/{}: {}",
                args.reps, v.name
            ));
            let g = iperf3_gbits(&v.downloader, &v.server_ip, args.seconds, true)?;
            gbits.entry(v.name).or_default().push(g);
            raw.push(json!({ "variant": v.name, "round": rep, "gbits": g }));
        }
    }
    let med = |k: &str| spread(gbits.get(k).map_or(&[][..], Vec::as_slice));
    let (host, _, _) = med("host");
    let (docker, _, _) = med("docker");
    let mut table = Table::new(
        format!(
            "egress: {} rounds of {} s (iperf3 -R)",
            args.reps, args.seconds
        ),
        &["variant", "Gbit/s med [min-max]", "vs host", "vs docker"],
    );
    for v in &variants {
        let (m, lo, hi) = med(v.name);
        table.row(vec![
            v.name.to_owned(),
            format!("{m:.2} [{lo:.2}-{hi:.2}]"),
            format!("{:.2}x", m / host),
            format!("{:.2}x", m / docker),
        ]);
    }
    Ok(Section {
        scenario: "egress".into(),
        method: format!(
            "A container downloads from an iperf3 server on the outside network (iperf3 -R, \
             {} s per round, {} rounds): host = a plain namespace over a veth, ferry = a ferry \
             container masqueraded in eBPF (tc only: the default on a veth uplink), ferry-xdp = \
             the same with the XDP prefilter on the uplink, docker = a namespace on a bridge \
             with Docker's MASQUERADE rule and netfilter conntrack. Server on CPU 0, client on CPU 1.",
            args.seconds, args.reps
        ),
        tables: vec![table],
        charts: vec![Chart {
            file: "egress".into(),
            title: "egress: download throughput (median)".into(),
            unit: "Gbit/s".into(),
            groups: vec![(
                "iperf3 -R".into(),
                variants
                    .iter()
                    .map(|v| (v.name.to_owned(), med(v.name).0))
                    .collect(),
            )],
        }],
        samples: json!(raw),
    })
}
