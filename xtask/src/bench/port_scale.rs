//! port-scale: does a published port cost more when many are published?
//! For 1, 100, 1,000 and 10,000 publishes, side by side:
//! - new-connection req/s through one published port (ferry: a hash lookup;
//!   Docker: the nat DOCKER chain walked rule by rule, the measured port's
//!   rule last);
//! - new-connection req/s of a service on the host network itself (Docker's
//!   PREROUTING sends every new connection to a local address through the
//!   DOCKER chain too);
//! - the time to add and remove one mapping (ferry: a whole `ferry run -d
//!   -p` and `ferry rm -f`, container included; Docker: one `iptables -A`
//!   and `-D` of its DNAT rule, the rule alone).
//!
//! wrk with one connection per request (50 connections), where rule walks
//! show; nginx on CPU 0, wrk on CPU 1. All sizes are up at once and take
//! turns in every round, so the machine's drift over the run does not pose
//! as a cost of size.

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::Context as _;
use ferry_integration::{HOST_UPLINK_IP, World, wait_until};
use serde_json::json;

use super::{
    BenchArgs,
    docker::DockerBridge,
    http::{Target, client_of, docroot, nginx_conf, run_nginx, wrk},
    report::{Chart, Section, Table},
    spawn_in, spread,
};
use crate::{capture, step};

const SIZES: [u32; 4] = [1, 100, 1_000, 10_000];
const CONNECTIONS: u32 = 50;
/// First host port of the publishes that only fill the tables.
const FILLER_BASE: u32 = 20_000;

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn ferry_setup(n: u32, out_dir: &Path, root: &Path) -> anyhow::Result<(Vec<Target>, World)> {
    let world = World::with_ferryd_args(&["--xdp-prefilter", "auto"]);
    let conf = nginx_conf(out_dir, &format!("scale-ferry-{n}"), 80, root)?;
    run_nginx(&world, out_dir, conf.to_str().context("utf-8 path")?)?;
    if n > 1 {
        let range = format!("{FILLER_BASE}-{}", FILLER_BASE + n - 2);
        world.ferry_ok(&[
            "run",
            "-d",
            "--name",
            "filler",
            "-p",
            &format!("{range}:{range}"),
            "--",
            "sleep",
            "infinity",
        ]);
    }
    let host_conf = nginx_conf(out_dir, &format!("scale-ferry-host-{n}"), 9090, root)?;
    let host_nginx = spawn_in(
        &world.host_ns_path(),
        0,
        "nginx",
        &["-c", host_conf.to_str().context("utf-8 path")?],
    );
    let target = |name, port: u16, servers| Target {
        _servers: servers,
        ..Target::at(
            name,
            world.client_ns_path(),
            format!("http://{HOST_UPLINK_IP}:{port}/"),
        )
    };
    let targets = vec![
        target("ferry", 8080, Vec::new()),
        target("ferry host service", 9090, vec![host_nginx]),
    ];
    Ok((targets, world))
}

fn docker_setup(
    n: u32,
    out_dir: &Path,
    root: &Path,
) -> anyhow::Result<(Vec<Target>, DockerBridge)> {
    let bridge = DockerBridge::new("172.29.0", 1)?;
    let client = client_of(&bridge.host, "10.206.0");
    // The measured port's rule goes last: the walk to it is the longest.
    let mut publishes: Vec<(u16, usize, u16)> = (0..n.saturating_sub(1))
        .map(|i| {
            let port = (FILLER_BASE + i) as u16;
            (port, 0, port)
        })
        .collect();
    publishes.push((8080, 0, 80));
    bridge.publish(&publishes)?;
    let conf = nginx_conf(out_dir, &format!("scale-docker-{n}"), 80, root)?;
    let nginx = spawn_in(
        &bridge.containers[0].path(),
        0,
        "nginx",
        &["-c", conf.to_str().context("utf-8 path")?],
    );
    let host_conf = nginx_conf(out_dir, &format!("scale-docker-host-{n}"), 9090, root)?;
    let host_nginx = spawn_in(
        &bridge.host.path(),
        0,
        "nginx",
        &["-c", host_conf.to_str().context("utf-8 path")?],
    );
    let client_ns = client.path();
    let targets = vec![
        Target {
            _servers: vec![nginx],
            _netns: vec![client],
            ..Target::at(
                "docker",
                client_ns.clone(),
                "http://10.206.0.1:8080/".into(),
            )
        },
        Target {
            _servers: vec![host_nginx],
            ..Target::at(
                "docker host service",
                client_ns,
                "http://10.206.0.1:9090/".into(),
            )
        },
    ];
    Ok((targets, bridge))
}

/// One size's worlds, alive for the whole scenario.
struct Scale {
    n: u32,
    targets: Vec<Target>,
    world: World,
    bridge: DockerBridge,
}

impl Scale {
    fn new(n: u32, out_dir: &Path, root: &Path) -> anyhow::Result<Self> {
        let (mut targets, world) = ferry_setup(n, out_dir, root)?;
        let (docker_targets, bridge) = docker_setup(n, out_dir, root)?;
        targets.extend(docker_targets);
        for t in &targets {
            let ready = wait_until(std::time::Duration::from_secs(10), || {
                wrk(t, 1, true, 1).is_ok_and(|r| r["rps"].as_f64().is_some_and(|v| v > 0.0))
            });
            anyhow::ensure!(
                ready,
                "port-scale {n}: {} does not answer at {}",
                t.name,
                t.url
            );
        }
        Ok(Self {
            n,
            targets,
            world,
            bridge,
        })
    }

    /// Adds one mapping and removes it again; milliseconds for each.
    fn add_remove(&self, system: &str) -> anyhow::Result<(f64, f64)> {
        if system == "ferry" {
            let t = Instant::now();
            self.world.ferry_ok(&[
                "run", "-d", "--name", "probe", "-p", "30000:80", "--", "sleep", "infinity",
            ]);
            let added = ms_since(t);
            let t = Instant::now();
            self.world.ferry_ok(&["rm", "-f", "probe"]);
            return Ok((added, ms_since(t)));
        }
        let rule = |op: &str| {
            let args = [
                "-t",
                "nat",
                op,
                "DOCKER",
                "!",
                "-i",
                "br0",
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                "30000",
                "-j",
                "DNAT",
                "--to-destination",
                "172.29.0.2:80",
            ];
            let t = Instant::now();
            capture(&mut self.bridge.host.cmd("iptables", &args))?;
            Ok::<_, anyhow::Error>(ms_since(t))
        };
        Ok((rule("-A")?, rule("-D")?))
    }
}

pub fn run(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    let root = docroot(out_dir)?;
    let mut rps: BTreeMap<(u32, &'static str), Vec<f64>> = BTreeMap::new();
    let mut add: BTreeMap<(u32, &'static str), Vec<f64>> = BTreeMap::new();
    let mut remove: BTreeMap<(u32, &'static str), Vec<f64>> = BTreeMap::new();
    let mut raw = Vec::new();
    // Every size stays up for the whole run and the sizes take turns within
    // each round, so a drift of the machine over the run lands on all of
    // them alike instead of on the larger sizes, which would come last.
    let mut scales = Vec::new();
    for n in SIZES {
        step(&format!(
            "bench port-scale: {n} published ports, ferry and Docker's rules"
        ));
        scales.push(Scale::new(n, out_dir, &root)?);
    }
    for rep in 1..=args.reps {
        for scale in &scales {
            let n = scale.n;
            for t in &scale.targets {
                step(&format!(
                    "bench port-scale: round {rep}/{}, {n} ports: {}",
                    args.reps, t.name
                ));
                let r = wrk(t, CONNECTIONS, true, args.seconds)?;
                let v = r["rps"].as_f64().unwrap_or(0.0);
                rps.entry((n, t.name)).or_default().push(v);
                raw.push(json!({ "ports": n, "variant": t.name, "round": rep, "wrk": r }));
            }
            for name in ["ferry", "docker"] {
                let (a, r) = scale.add_remove(name)?;
                add.entry((n, name)).or_default().push(a);
                remove.entry((n, name)).or_default().push(r);
                raw.push(json!({ "ports": n, "variant": name, "round": rep, "add_ms": a, "remove_ms": r }));
            }
        }
    }
    drop(scales);

    let med = |m: &BTreeMap<(u32, &'static str), Vec<f64>>, n: u32, name: &'static str| {
        spread(m.get(&(n, name)).map_or(&[][..], Vec::as_slice)).0
    };
    let mut table = Table::new(
        format!(
            "port-scale: {} rounds of {} s, one connection per request, {CONNECTIONS} connections",
            args.reps, args.seconds
        ),
        &[
            "ports",
            "system",
            "published req/s",
            "vs 1 port",
            "host service req/s",
            "vs 1 port",
            "add ms",
            "remove ms",
        ],
    );
    let mut published_groups = Vec::new();
    let mut host_groups = Vec::new();
    for n in SIZES {
        let mut pub_bars = Vec::new();
        let mut host_bars = Vec::new();
        for (system, host_name) in [
            ("ferry", "ferry host service"),
            ("docker", "docker host service"),
        ] {
            let p = med(&rps, n, system);
            let h = med(&rps, n, host_name);
            table.row(vec![
                n.to_string(),
                system.to_owned(),
                format!("{p:.0}"),
                format!("{:.3}x", p / med(&rps, 1, system)),
                format!("{h:.0}"),
                format!("{:.3}x", h / med(&rps, 1, host_name)),
                format!("{:.2}", med(&add, n, system)),
                format!("{:.2}", med(&remove, n, system)),
            ]);
            pub_bars.push((system.to_owned(), p));
            host_bars.push((system.to_owned(), h));
        }
        published_groups.push((format!("{n} ports"), pub_bars));
        host_groups.push((format!("{n} ports"), host_bars));
    }
    Ok(Section {
        scenario: "port-scale".into(),
        method: format!(
            "For 1, 100, 1,000 and 10,000 published ports (ferry: one container publishing \
             8080 and one publishing the rest as a range; Docker: its DNAT/ACCEPT rules, the \
             measured port's last), wrk with one connection per request ({CONNECTIONS} \
             connections, {} s, {} rounds) through the published port and to a service on \
             the host network; every size is set up before the first sample and the sizes \
             take turns within each round. add/remove: ferry times a whole `ferry run -d -p` and `ferry rm \
             -f` (container included), Docker one `iptables -A` / `-D` of a DNAT rule (the \
             rule alone): compare each system across sizes, not the two systems.",
            args.seconds, args.reps
        ),
        tables: vec![table],
        charts: vec![
            Chart {
                file: "port-scale-published".into(),
                title: "port-scale: new connections/s through a published port".into(),
                unit: "req/s".into(),
                groups: published_groups,
            },
            Chart {
                file: "port-scale-host-service".into(),
                title: "port-scale: new connections/s to a host-network service".into(),
                unit: "req/s".into(),
                groups: host_groups,
            },
        ],
        samples: json!(raw),
    })
}
