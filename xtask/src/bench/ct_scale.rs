//! conntrack-scale: what 100,000 tracked flows cost. For ferry (its `ct`
//! LRU map) and Docker's datapath (netfilter conntrack), side by side:
//! - req/s through a published port, keep-alive and one connection per
//!   request, with the table empty and with 100,000 extra flows in it;
//! - ferry: the uplink program's run time per packet (bpf_stats) in both
//!   states, i.e. the lookup cost itself;
//! - memory: ferry's conntrack maps (preallocated: the same empty or
//!   full), netfilter's conntrack slab objects the flows added.
//!
//! The flows are UDP datagrams from 50,000 source ports to two published
//! UDP ports, written as raw frames from the client namespace, with UDP
//! timeouts raised so none expires during the run. Unanswered, they stay in
//! ferry's `ct_new` table; the connections measured are assured, in `ct`.

use std::path::Path;

use anyhow::{Context as _, ensure};
use ferry_integration::{HOST_UPLINK_IP, TempNetns, World, wait_until};
use serde_json::{Value, json};

use super::{
    BenchArgs, KernelSwitch,
    docker::DockerBridge,
    http::{Target, client_of, docroot, ferry_url, nginx_conf, run_nginx, wrk},
    prog_stats,
    report::{Chart, Section, Table},
    spawn_in, spread,
};
use crate::{capture, step};

const FLOWS: u32 = 100_000;
const CONNECTIONS: u32 = 50;
/// Source ports of the flood: FLOOD_SPORT .. FLOOD_SPORT + FLOWS / 2, to
/// each of the two UDP ports at FLOOD_DPORT.
const FLOOD_SPORT: u32 = 10_000;
const FLOOD_DPORT: u32 = 5300;

/// Raw UDP frames with distinct source ports, as fast as Python writes.
const FLOOD: &str = r#"
import socket, struct, sys
dst_mac, src_mac, src, dst, dport, sport, n = sys.argv[1:8]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
s4, d4 = socket.inet_aton(src), socket.inet_aton(dst)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, s4, d4)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
for p in range(2):
    for i in range(int(n)):
        sock.send(eth + ip + struct.pack("!HHHH", int(sport) + i, int(dport) + p, 8, 0))
"#;

fn mac_of(ns: &TempNetns, dev: &str) -> anyhow::Result<String> {
    let link = capture(&mut ns.cmd("ip", &["-o", "link", "show", dev]))?;
    let at = link.find("link/ether ").context("no MAC")? + "link/ether ".len();
    Ok(link[at..at + 17].to_owned())
}

/// Sends FLOWS new UDP flows from `client` to `dst` (the host across its
/// uplink0).
fn flood(host: &TempNetns, client: &TempNetns, dst: &str, src: &str) -> anyhow::Result<()> {
    let (dst_mac, src_mac) = (mac_of(host, "uplink0")?, mac_of(client, "eth0")?);
    let (dport, sport, n) = (
        FLOOD_DPORT.to_string(),
        FLOOD_SPORT.to_string(),
        (FLOWS / 2).to_string(),
    );
    capture(&mut client.cmd(
        "python3",
        &[
            "-c", FLOOD, &dst_mac, &src_mac, src, dst, &dport, &sport, &n,
        ],
    ))?;
    Ok(())
}

/// netfilter conntrack entries in `ns`.
fn nf_count(ns: &TempNetns) -> u64 {
    capture(&mut ns.cmd("cat", &["/proc/sys/net/netfilter/nf_conntrack_count"]))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Active objects and object size of the nf_conntrack slab cache.
fn nf_slab() -> (u64, u64) {
    let slab = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    slab.lines()
        .find(|l| l.starts_with("nf_conntrack "))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(3)
                .filter_map(|v| v.parse().ok())
                .collect();
            (
                f.first().copied().unwrap_or(0),
                f.get(2).copied().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

pub fn run(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    let root = docroot(out_dir)?;
    step(&format!(
        "bench conntrack-scale: ferry and Docker's datapath, then {FLOWS} flows"
    ));
    let _stats = KernelSwitch::on("kernel/bpf_stats_enabled");

    // ferry: nginx published on 8080, a container publishing the flood's
    // two UDP ports. Per-CPU LRU lists split `ct_new`'s capacity by CPU and
    // the flood arrives on one, hence the headroom.
    let world = World::with_ferryd_args(&[
        "--xdp-prefilter",
        "auto",
        "--ct-new-max",
        "524288",
        "--ct-timeout",
        "udp=3600",
    ]);
    let conf = nginx_conf(out_dir, "ct-ferry", 80, &root)?;
    run_nginx(&world, out_dir, conf.to_str().context("utf-8 path")?)?;
    let ports = format!("{FLOOD_DPORT}-{}", FLOOD_DPORT + 1);
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "sink",
        "-p",
        &format!("{ports}:{ports}/udp"),
        "--",
        "sleep",
        "infinity",
    ]);
    let uplink_prog = world.pin_dir.join("progs/uplink_ingress");

    // Docker: its bridge, rules and nginx; netfilter's UDP timeouts raised
    // in that namespace only.
    let bridge = DockerBridge::new("172.29.0", 1)?;
    let client = client_of(&bridge.host, "10.206.0");
    bridge.publish(&[(8080, 0, 80)])?;
    for sysctl in [
        "net.netfilter.nf_conntrack_udp_timeout=3600",
        "net.netfilter.nf_conntrack_udp_timeout_stream=3600",
    ] {
        capture(&mut bridge.host.cmd("sysctl", &["-qw", sysctl]))?;
    }
    let docker_conf = nginx_conf(out_dir, "ct-docker", 80, &root)?;
    let nginx = spawn_in(
        &bridge.containers[0].path(),
        0,
        "nginx",
        &["-c", docker_conf.to_str().context("utf-8 path")?],
    );
    let targets = [
        Target::at("ferry", world.client_ns_path(), ferry_url()),
        Target {
            _servers: vec![nginx],
            ..Target::at("docker", client.path(), "http://10.206.0.1:8080/".into())
        },
    ];
    for t in &targets {
        let ready = wait_until(std::time::Duration::from_secs(10), || {
            wrk(t, 1, true, 1).is_ok_and(|r| r["rps"].as_f64().is_some_and(|v| v > 0.0))
        });
        ensure!(
            ready,
            "conntrack-scale: {} does not answer at {}",
            t.name,
            t.url
        );
    }

    let mut rps: std::collections::BTreeMap<(&str, &str, &str), Vec<f64>> = Default::default();
    let mut ns_per_packet: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut raw = Vec::new();
    let mut memory = json!({});
    for state in ["empty", "100k flows"] {
        if state != "empty" {
            let (slab_before, objsize) = nf_slab();
            flood(
                &world.host,
                &world.client,
                HOST_UPLINK_IP,
                ferry_integration::CLIENT_IP,
            )?;
            flood(&bridge.host, &client, "10.206.0.1", "10.206.0.2")?;
            let entries = world.datapath()["Conntrack"]["Entries"]
                .as_u64()
                .unwrap_or(0);
            let nf = nf_count(&bridge.host);
            let (slab_after, _) = nf_slab();
            step(&format!(
                "bench conntrack-scale: ferry ct holds {entries} entries, netfilter {nf}"
            ));
            ensure!(
                entries >= u64::from(FLOWS) * 2 * 9 / 10 && nf >= u64::from(FLOWS) * 9 / 10,
                "the flood did not fill the tables: ferry {entries} entries, netfilter {nf}"
            );
            let mut capacity = 0;
            let mut bytes = 0;
            for map in ["ct", "ct_new"] {
                let info: Value = serde_json::from_str(&capture(
                    std::process::Command::new("bpftool")
                        .args(["-j", "map", "show", "pinned"])
                        .arg(world.pin_dir.join(map)),
                )?)?;
                capacity += info["max_entries"].as_u64().unwrap_or(0);
                bytes += info["bytes_memlock"].as_u64().unwrap_or(0);
            }
            memory = json!({
                "ferry_ct_entries": entries,
                "ferry_ct_capacity": capacity,
                "ferry_ct_bytes": bytes,
                "netfilter_entries": nf,
                "netfilter_slab_objects_added": slab_after.saturating_sub(slab_before),
                "netfilter_object_bytes": objsize,
            });
        }
        for rep in 1..=args.reps {
            for t in &targets {
                for close in [false, true] {
                    let mode = if close { "close" } else { "keep-alive" };
                    step(&format!(
                        "bench conntrack-scale: {state}, round {rep}/{}: {} {mode}",
                        args.reps, t.name
                    ));
                    let before = prog_stats(&uplink_prog);
                    let r = wrk(t, CONNECTIONS, close, args.seconds)?;
                    let after = prog_stats(&uplink_prog);
                    let v = r["rps"].as_f64().unwrap_or(0.0);
                    rps.entry((state, t.name, mode)).or_default().push(v);
                    if t.name == "ferry" && after.1 > before.1 {
                        let ns = (after.0 - before.0) as f64 / (after.1 - before.1) as f64;
                        ns_per_packet.entry(state).or_default().push(ns);
                    }
                    raw.push(json!({ "state": state, "variant": t.name, "mode": mode, "round": rep, "wrk": r }));
                }
            }
        }
    }

    let med = |v: Option<&Vec<f64>>| spread(v.map_or(&[][..], Vec::as_slice)).0;
    let mut table = Table::new(
        format!(
            "conntrack-scale: {} rounds of {} s, {CONNECTIONS} connections, empty vs {FLOWS} extra flows",
            args.reps, args.seconds
        ),
        &["system", "load", "empty req/s", "100k flows req/s", "ratio"],
    );
    let mut groups = Vec::new();
    for system in ["ferry", "docker"] {
        for mode in ["keep-alive", "close"] {
            let e = med(rps.get(&("empty", system, mode)));
            let f = med(rps.get(&("100k flows", system, mode)));
            table.row(vec![
                system.into(),
                mode.into(),
                format!("{e:.0}"),
                format!("{f:.0}"),
                format!("{:.3}x", f / e),
            ]);
            groups.push((
                format!("{system} {mode}"),
                vec![("empty".to_owned(), e), ("100k flows".to_owned(), f)],
            ));
        }
    }
    let mut cost = Table::new(
        "conntrack-scale: per-packet cost and memory".to_owned(),
        &["measure", "empty", "100k flows"],
    );
    cost.row(vec![
        "ferry uplink_ingress ns/packet (bpf_stats)".into(),
        format!("{:.0}", med(ns_per_packet.get("empty"))),
        format!("{:.0}", med(ns_per_packet.get("100k flows"))),
    ]);
    let mib = |b: f64| format!("{:.1} MiB", b / f64::from(1 << 20));
    let ferry_bytes = memory["ferry_ct_bytes"].as_f64().unwrap_or(0.0);
    cost.row(vec![
        format!(
            "ferry ct map memory ({} entries, preallocated)",
            memory["ferry_ct_capacity"]
        ),
        mib(ferry_bytes),
        mib(ferry_bytes),
    ]);
    let nf_bytes = memory["netfilter_slab_objects_added"]
        .as_f64()
        .unwrap_or(0.0)
        * memory["netfilter_object_bytes"].as_f64().unwrap_or(0.0);
    cost.row(vec![
        "netfilter conntrack slab the flows added".into(),
        "0".into(),
        mib(nf_bytes),
    ]);
    Ok(Section {
        scenario: "conntrack-scale".into(),
        method: format!(
            "nginx behind a published port (ferry; Docker's bridge, rules and conntrack), wrk \
             with {CONNECTIONS} connections, keep-alive and one connection per request, {} s, \
             {} rounds, first with the tables empty, then after {FLOWS} extra UDP flows (raw \
             frames from 50,000 source ports to two published UDP ports; UDP timeouts raised so \
             they stay). ferry's per-packet cost is the uplink program's run time over its run \
             count (kernel.bpf_stats_enabled on for the scenario, restored after). ferry's \
             conntrack maps (ct for assured flows, ct_new for the rest, where the unanswered \
             flood stays) are preallocated: their memory is the same empty or full (it ran \
             with --ct-new-max 524288 because per-CPU LRU lists split the capacity by CPU and \
             the flood arrives on one).",
            args.seconds, args.reps
        ),
        tables: vec![table, cost],
        charts: vec![Chart {
            file: "conntrack-scale".into(),
            title: format!("conntrack-scale: req/s empty vs {FLOWS} flows"),
            unit: "req/s".into(),
            groups,
        }],
        samples: json!({ "memory": memory, "ns_per_packet": ns_per_packet, "runs": raw }),
    })
}
