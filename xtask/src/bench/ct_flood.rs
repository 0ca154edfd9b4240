//! ct-flood: what a SYN flood costs everyone else. For ferry (its two
//! conntrack tables, default sizes) and Docker's datapath (bridge,
//! iptables, netfilter conntrack with this machine's nf_conntrack_max),
//! one after the other, each round:
//! - legitimate new connections per second through a published port (wrk,
//!   one connection per request) without a flood, then during one;
//! - HELD established connections to a service behind another published
//!   port, opened before the flood and probed after it, server first
//!   (the reply direction's translation) then client: how many still
//!   work;
//! - the flood: hping3 SYNs from random sources to the published port, as
//!   fast as one process sends, for FLOOD_SECONDS; its rate from the
//!   client veth's counters, and the packets the CPUs' input backlogs
//!   dropped meanwhile.

use std::{io::BufRead as _, path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, ensure};
use ferry_integration::{HOST_UPLINK_IP, TempNetns, World, wait_until};
use serde_json::{Value, json};

use super::{
    BenchArgs,
    docker::DockerBridge,
    http::{Target, client_of, docroot, ferry_url, nginx_conf, run_nginx, wrk},
    report::{Chart, Section, Table},
    spawn, spawn_in, spread,
};
use crate::{capture, step};

/// Established connections held through each flood.
const HELD: u32 = 200;
const FLOOD_SECONDS: u32 = 10;
const CONNECTIONS: u32 = 50;
/// The held connections' service, inside the container.
const HELD_PORT: u16 = 7000;

/// The held connections' server: accepts N connections and echoes one
/// line on each; DELAY seconds after the last, says "y" on each (its reply
/// direction speaks first), then echoes one more line.
const SERVER: &str = r#"
import socket, sys, time
port, n, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("", port)); l.listen(1024)
while True:
    socks = []
    while len(socks) < n:
        s, _ = l.accept(); s.settimeout(30)
        s.sendall(s.recv(16)); socks.append(s)
    time.sleep(delay)
    for s in socks:
        try: s.sendall(b"y\n")
        except OSError: pass
    for s in socks:
        try: s.sendall(s.recv(16))
        except OSError: pass
    for s in socks: s.close()
"#;

/// The held connections' client: opens N, each echoed once, prints
/// "ready"; after a line on stdin, counts those that hear "y" and then
/// get their own line back, and prints the count.
const CLIENT: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"x\n"); s.recv(16); socks.append(s)
print("ready", flush=True)
sys.stdin.readline()
alive = 0
for s in socks:
    try:
        s.settimeout(15)
        if s.recv(16) != b"y\n": continue
        s.sendall(b"z\n")
        if s.recv(16) == b"z\n": alive += 1
    except OSError: pass
print(alive, flush=True)
"#;

/// One datapath under test.
struct Victim {
    target: Target,
    /// The namespace of the published host address (Docker's host, or
    /// ferry's "host"), for netfilter's counters.
    host: Option<TempNetns>,
    client: std::path::PathBuf,
    address: String,
    world: Option<World>,
}

/// Packets the client namespace's eth0 has sent.
fn tx_packets(client: &Path) -> u64 {
    let out = capture(&mut ferry_integration::in_netns(
        client,
        "ip",
        &["-s", "-j", "link", "show", "dev", "eth0"],
    ))
    .unwrap_or_default();
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v[0]["stats64"]["tx"]["packets"].as_u64())
        .unwrap_or(0)
}

/// Packets the CPUs' input backlogs dropped (`/proc/net/softnet_stat`,
/// second column), summed: a full backlog drops everyone's packets.
fn softnet_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| u64::from_str_radix(c, 16).ok())
        .sum()
}

/// netfilter's `drop` and `early_drop` in `ns`, summed over CPUs.
fn nf_drops(ns: &TempNetns) -> (u64, u64) {
    let stat = capture(&mut ns.cmd("cat", &["/proc/net/stat/nf_conntrack"])).unwrap_or_default();
    let mut lines = stat.lines();
    let Some(header) = lines.next() else {
        return (0, 0);
    };
    let column = |name: &str| header.split_whitespace().position(|h| h == name);
    let (drop, early) = (column("drop"), column("early_drop"));
    let mut sums = (0, 0);
    for line in lines {
        let cells: Vec<u64> = line
            .split_whitespace()
            .map(|c| u64::from_str_radix(c, 16).unwrap_or(0))
            .collect();
        sums.0 += drop.and_then(|i| cells.get(i)).copied().unwrap_or(0);
        sums.1 += early.and_then(|i| cells.get(i)).copied().unwrap_or(0);
    }
    sums
}

/// One round against `v`: baseline rate, then held connections through a
/// flood with the rate during it. Returns the round's figures.
fn round(v: &Victim, seconds: u32) -> anyhow::Result<Value> {
    let base = wrk(&v.target, CONNECTIONS, true, seconds)?;
    let mut holder = ferry_integration::in_netns(
        &v.client,
        "python3",
        &[
            "-c",
            CLIENT,
            &v.address,
            &(HELD_PORT + 1000).to_string(),
            &HELD.to_string(),
        ],
    );
    holder
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut holder = holder.spawn().context("spawn the held connections")?;
    let mut out = std::io::BufReader::new(holder.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    ensure!(
        line.trim() == "ready",
        "the held connections did not open: {line:?}"
    );

    let softnet_before = softnet_dropped();
    let sent_before = tx_packets(&v.client);
    let flood = spawn(super::bench_cmd(
        &v.client,
        Some(1),
        None,
        "hping3",
        &[
            "-q",
            "-S",
            "--flood",
            "--rand-source",
            "-p",
            "8080",
            &v.address,
        ],
    ));
    let during = wrk(&v.target, CONNECTIONS, true, FLOOD_SECONDS);
    drop(flood);
    let flood_packets = tx_packets(&v.client).saturating_sub(sent_before);
    let backlog_dropped = softnet_dropped().saturating_sub(softnet_before);
    let during = during?;

    {
        use std::io::Write as _;
        let mut stdin = holder.stdin.take().context("stdin")?;
        writeln!(stdin)?;
    }
    line.clear();
    out.read_line(&mut line)?;
    let _ = holder.wait();
    let alive: u32 = line
        .trim()
        .parse()
        .with_context(|| format!("held count {line:?}"))?;

    let mut figures = json!({
        "rps_without": base["rps"],
        "rps_during": during["rps"],
        "errors_during": during["errors"],
        "held": HELD,
        "lost": HELD - alive.min(HELD),
        "flood_packets": flood_packets,
        "backlog_dropped": backlog_dropped,
        "flood_pps": flood_packets as f64 / f64::from(FLOOD_SECONDS),
    });
    if let Some(world) = &v.world {
        figures["conntrack"] = world.datapath()["Conntrack"].clone();
    }
    if let Some(host) = &v.host {
        let (drop, early) = nf_drops(host);
        figures["nf_drop"] = json!(drop);
        figures["nf_early_drop"] = json!(early);
    }
    Ok(figures)
}

pub fn run(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    let root = docroot(out_dir)?;
    step("bench ct-flood: a SYN flood against ferry and Docker's datapath");
    // The server says "y" a few seconds after the flood ends: the held
    // connections open right before it.
    let (port, n, delay) = (
        HELD_PORT.to_string(),
        HELD.to_string(),
        (FLOOD_SECONDS + 3).to_string(),
    );

    // ferry, default tables: nginx published on 8080, the held service on
    // HELD_PORT + 1000.
    // The XDP prefilter stays off the veth uplink as ferryd's default has
    // it: on a veth it moves the receive path onto NAPI on another CPU,
    // while Docker's variant receives in the sender's context, and the
    // two would not take the same flood.
    let world = World::with_ferryd_args(&["--xdp-prefilter", "auto"]);
    let conf = nginx_conf(out_dir, "flood-ferry", 80, &root)?;
    run_nginx(&world, out_dir, conf.to_str().context("utf-8 path")?)?;
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "held",
        "-p",
        &format!("{}:{port}", HELD_PORT + 1000),
        "--",
        "python3",
        "-c",
        SERVER,
        &port,
        &n,
        &delay,
    ]);
    let ferry = Victim {
        target: Target::at("ferry", world.client_ns_path(), ferry_url()),
        host: None,
        client: world.client_ns_path(),
        address: HOST_UPLINK_IP.to_owned(),
        world: Some(world),
    };

    // Docker: its bridge, rules, conntrack; the same two services.
    let bridge = DockerBridge::new("172.30.0", 1)?;
    let client = client_of(&bridge.host, "10.207.0");
    bridge.publish(&[(8080, 0, 80), (HELD_PORT + 1000, 0, HELD_PORT)])?;
    let docker_conf = nginx_conf(out_dir, "flood-docker", 80, &root)?;
    let container = bridge.containers[0].path();
    let nginx = spawn_in(
        &container,
        0,
        "nginx",
        &["-c", docker_conf.to_str().context("utf-8 path")?],
    );
    let server = spawn_in(&container, 0, "python3", &["-c", SERVER, &port, &n, &delay]);
    let docker = Victim {
        target: Target {
            _servers: vec![nginx, server],
            ..Target::at("docker", client.path(), "http://10.207.0.1:8080/".into())
        },
        client: client.path(),
        address: "10.207.0.1".into(),
        host: Some(bridge.host),
        world: None,
    };
    let _keep: (Vec<TempNetns>, TempNetns) = (bridge.containers, client);

    let victims = [ferry, docker];
    for v in &victims {
        let ready = wait_until(Duration::from_secs(10), || {
            wrk(&v.target, 1, true, 1).is_ok_and(|r| r["rps"].as_f64().is_some_and(|x| x > 0.0))
        });
        ensure!(
            ready,
            "ct-flood: {} does not answer at {}",
            v.target.name,
            v.target.url
        );
    }

    let mut runs: Vec<Value> = Vec::new();
    for rep in 1..=args.reps {
        for v in &victims {
            step(&format!(
                "bench ct-flood: round {rep}/{}: {} ({} s without, {FLOOD_SECONDS} s of flood)",
                args.reps, v.target.name, args.seconds
            ));
            let mut figures = round(v, args.seconds)?;
            figures["variant"] = json!(v.target.name);
            step(&format!("bench ct-flood: {figures}"));
            runs.push(figures);
            // The flood's half-open flows age out before the next round
            // (netfilter SYN_RECV 60 s; ferry's syn_recv 60 s).
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    let of = |name: &str, key: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["variant"] == name)
            .filter_map(|r| r[key].as_f64())
            .collect()
    };
    let mut table = Table::new(
        "ct-flood: new connections/s through a published port, and established flows lost",
        &[
            "datapath",
            "req/s without",
            "req/s during flood",
            "during/without",
            "flood pkt/s",
            "backlog drops",
            &format!("held lost (of {HELD})"),
        ],
    );
    let mut groups = Vec::new();
    let mut during_by = std::collections::BTreeMap::new();
    for name in ["ferry", "docker"] {
        let (without, _, _) = spread(&of(name, "rps_without"));
        let (during, lo, hi) = spread(&of(name, "rps_during"));
        let (pps, _, _) = spread(&of(name, "flood_pps"));
        let lost = of(name, "lost");
        let (backlog, _, _) = spread(&of(name, "backlog_dropped"));
        during_by.insert(name, during);
        table.row(vec![
            name.into(),
            format!("{without:.0}"),
            format!("{during:.0} ({lo:.0}-{hi:.0})"),
            format!("{:.2}", during / without.max(1.0)),
            format!("{pps:.0}"),
            format!("{backlog:.0}"),
            format!("{}", lost.iter().map(|l| *l as u64).max().unwrap_or(0)),
        ]);
        groups.push((
            name.to_owned(),
            vec![
                ("without".to_owned(), without),
                ("during flood".to_owned(), during),
            ],
        ));
    }
    table.row(vec![
        "ferry/docker during".into(),
        String::new(),
        format!("{:.2}x", during_by["ferry"] / during_by["docker"].max(1.0)),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    Ok(Section {
        scenario: "ct-flood".into(),
        method: format!(
            "nginx behind a published port (ferry with its default conntrack tables; Docker's \
             bridge, rules and netfilter conntrack with this machine's nf_conntrack_max), wrk \
             with {CONNECTIONS} connections and one connection per request from the client \
             namespace, {} s without a flood, then {FLOOD_SECONDS} s during one: hping3 SYNs \
             from random sources to the published port, as fast as one process sends (rate \
             from the client veth's counters; ferry without the XDP prefilter on its veth \
             uplink, its default, so that both receive the flood in the sender's context: \
             with XDP a veth receives through NAPI on another CPU, whose input backlog then \
             overflows). {HELD} established connections to a second \
             published port are opened before the flood and probed after it, the server \
             speaking first, then the client; held lost is the worst round. {} rounds, \
             interleaved; medians (min-max).",
            args.seconds, args.reps
        ),
        tables: vec![table],
        charts: vec![Chart {
            file: "ct-flood".into(),
            title: "ct-flood: new connections/s without and during a SYN flood".into(),
            unit: "req/s".into(),
            groups,
        }],
        samples: json!({ "runs": runs }),
    })
}
