//! cross-host: hosts as namespaces on one bridge (as the cluster tests
//! build them), a container on each of two. Variants, measured side by
//! side:
//! - host: host to host over the segment, the limit;
//! - ferry: two `ferryd --cluster` members, routed natively by
//!   `from_container` and `uplink_ingress`;
//! - ferry-vxlan: two more members with `--cluster-routing vxlan`
//!   (set_tunnel_key + redirect into the VXLAN device, `tunnel_ingress`);
//! - kernel-routed: containers behind veths routed by the kernel
//!   (ip_forward, a route to the other's block via it), as Calico routes;
//! - flannel: a bridge per host and a VXLAN device with static neighbour
//!   and forwarding entries, as flannel's vxlan backend builds it.

use std::time::{Duration, Instant};

use ferry_integration::{
    Container, TempNetns, World, check,
    cluster::{Etcd, FABRIC_NET, Fabric},
    ping, unique_name,
};

use super::{
    BenchArgs,
    c2c::{Variant, measure},
    report::{Section, Table},
};
use crate::step;

/// A host namespace plugged into `fabric` at `.<octet>`, forwarding on,
/// and its one container namespace (not yet wired).
fn kernel_host(fabric: &Fabric, octet: u8) -> (TempNetns, TempNetns) {
    let tag = unique_name("fyk");
    let host = TempNetns::new(&format!("{tag}-h"));
    let pod = TempNetns::new(&format!("{tag}-p"));
    fabric.plug(&host, "fab0", octet);
    check(&mut host.cmd("sysctl", &["-qw", "net.ipv4.ip_forward=1"]));
    (host, pod)
}

/// A veth from `host` (as `host_if`) to `pod` (`eth0`, `addr/24`,
/// default via `gateway`, `mtu`).
fn wire_pod(
    host: &TempNetns,
    host_if: &str,
    pod: &TempNetns,
    addr: &str,
    gateway: &str,
    mtu: &str,
) {
    host.ip(&[
        "link", "add", host_if, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu,
        "netns", &pod.name,
    ]);
    host.ip(&["link", "set", host_if, "up"]);
    pod.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", gateway]);
}

/// Calico-style: the pod's veth routed by the host, the other block via
/// the other host.
fn routed_host(
    fabric: &Fabric,
    octet: u8,
    block: u8,
    peer_octet: u8,
    peer_block: u8,
) -> Vec<TempNetns> {
    let (host, pod) = kernel_host(fabric, octet);
    host.ip(&["addr", "add", &format!("10.96.{block}.1/24"), "dev", "lo"]);
    wire_pod(
        &host,
        "veth0",
        &pod,
        &format!("10.96.{block}.2"),
        &format!("10.96.{block}.1"),
        "1500",
    );
    host.ip(&[
        "route",
        "add",
        &format!("10.96.{block}.2/32"),
        "dev",
        "veth0",
    ]);
    host.ip(&[
        "route",
        "add",
        &format!("10.96.{peer_block}.0/24"),
        "via",
        &format!("{FABRIC_NET}.{peer_octet}"),
    ]);
    check(&mut host.cmd("sysctl", &["-qw", "net.ipv4.conf.veth0.proxy_arp=1"]));
    vec![pod, host]
}

/// flannel's vxlan backend: pods on a bridge `cni0`, `flannel.1` (VNI 1,
/// no learning) with the peer's VTEP address, MAC and host set by hand.
fn flannel_host(
    fabric: &Fabric,
    octet: u8,
    block: u8,
    peer_octet: u8,
    peer_block: u8,
) -> Vec<TempNetns> {
    let (host, pod) = kernel_host(fabric, octet);
    let local = format!("{FABRIC_NET}.{octet}");
    let vtep_mac = |b: u8| format!("02:fa:00:00:00:{b:02x}");
    host.ip(&["link", "add", "cni0", "type", "bridge"]);
    host.ip(&["addr", "add", &format!("10.95.{block}.1/24"), "dev", "cni0"]);
    host.ip(&["link", "set", "cni0", "up"]);
    wire_pod(
        &host,
        "veth0",
        &pod,
        &format!("10.95.{block}.2"),
        &format!("10.95.{block}.1"),
        "1450",
    );
    host.ip(&["link", "set", "veth0", "master", "cni0"]);
    host.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        &vtep_mac(block),
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "fab0",
        "dstport",
        "4789",
        "nolearning",
    ]);
    host.ip(&[
        "addr",
        "add",
        &format!("10.95.{block}.0/32"),
        "dev",
        "flannel.1",
    ]);
    host.ip(&["link", "set", "flannel.1", "up"]);
    let peer_vtep = format!("10.95.{peer_block}.0");
    host.ip(&[
        "route",
        "add",
        &format!("10.95.{peer_block}.0/24"),
        "via",
        &peer_vtep,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    host.ip(&[
        "neigh",
        "add",
        &peer_vtep,
        "lladdr",
        &vtep_mac(peer_block),
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    check(&mut host.cmd(
        "bridge",
        &[
            "fdb",
            "add",
            &vtep_mac(peer_block),
            "dev",
            "flannel.1",
            "dst",
            &format!("{FABRIC_NET}.{peer_octet}"),
        ],
    ));
    vec![pod, host]
}

fn ferry_variant(name: &'static str, client: &Container, server: &Container) -> Variant {
    Variant {
        name,
        client_ns: client.netns.clone(),
        server_ns: server.netns.clone(),
        server_ip: server.ip.clone(),
        _world: None,
        _netns: Vec::new(),
    }
}

fn kernel_variant(
    name: &'static str,
    client: Vec<TempNetns>,
    server: Vec<TempNetns>,
    server_ip: &str,
) -> Variant {
    Variant {
        name,
        client_ns: client[0].path(),
        server_ns: server[0].path(),
        server_ip: server_ip.into(),
        _world: None,
        _netns: client.into_iter().chain(server).collect(),
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Section> {
    step("bench cross-host: a segment, etcd, four ferryd members, four kernel hosts");
    let fabric = Fabric::new();
    let etcd = Etcd::start(&fabric, 1);
    let member = |octet: u8, routing: &str| {
        World::cluster_member(
            &fabric,
            &etcd.url(),
            octet,
            &["--xdp-prefilter", "off", "--cluster-routing", routing],
        )
    };
    let (a, b) = (member(11, "auto"), member(12, "auto"));
    let (d, e) = (member(13, "vxlan"), member(14, "vxlan"));
    a.wait_for_member(&b.name, "native");
    d.wait_for_member(&e.name, "vxlan");
    e.wait_for_member(&d.name, "vxlan");
    let run = |w: &World, name: &str| w.run(name, &["sleep", "infinity"]);
    let (ca, cb, cd, ce) = (
        run(&a, "bench-a"),
        run(&b, "bench-b"),
        run(&d, "bench-d"),
        run(&e, "bench-e"),
    );
    let variants = vec![
        Variant {
            name: "host",
            client_ns: a.host_ns_path(),
            server_ns: b.host_ns_path(),
            server_ip: format!("{FABRIC_NET}.12"),
            _world: None,
            _netns: Vec::new(),
        },
        ferry_variant("ferry", &ca, &cb),
        ferry_variant("ferry-vxlan", &cd, &ce),
        kernel_variant(
            "kernel-routed",
            routed_host(&fabric, 21, 1, 22, 2),
            routed_host(&fabric, 22, 2, 21, 1),
            "10.96.2.2",
        ),
        kernel_variant(
            "flannel",
            flannel_host(&fabric, 23, 3, 24, 4),
            flannel_host(&fabric, 24, 4, 23, 3),
            "10.95.4.2",
        ),
    ];
    let method = format!(
        "Hosts as namespaces on one Linux bridge (veths), a container on each of two: host \
         (host to host, the limit); ferry (two `ferryd --cluster` members, one etcd: \
         from_container routes natively with bpf_redirect_neigh, uplink_ingress delivers with \
         bpf_redirect_peer); ferry-vxlan (two members with --cluster-routing vxlan: \
         bpf_skb_set_tunnel_key and a redirect into an external VXLAN device, tunnel_ingress \
         delivers; container MTU 1450); kernel-routed (veths, ip_forward and a route to the \
         other block, as Calico routes natively); flannel (a bridge per host and a VXLAN device \
         with static neighbour and FDB entries, as flannel's vxlan backend; MTU 1450). XDP off. \
         Per round: iperf3 TCP for {} s and {} 64-byte TCP request/response round trips; \
         server on CPU 0, client on CPU 1.",
        args.seconds, args.rr_count
    );
    let mut section = measure(
        args,
        "cross-host",
        method,
        &variants,
        &[
            ("ferry", &["host", "kernel-routed"]),
            ("ferry-vxlan", &["host", "flannel"]),
        ],
    )?;
    section.tables.push(reachable_after_run(&a, &cb)?);
    drop((a, b, d, e));
    Ok(section)
}

/// How long from `ferry run` on `host` to the new container answering a
/// ping from `remote` (a container on another member), over a few runs.
fn reachable_after_run(host: &World, remote: &Container) -> anyhow::Result<Table> {
    const RUNS: usize = 20;
    step(&format!(
        "bench cross-host: {RUNS} containers started and pinged from another host"
    ));
    let mut took = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let name = format!("reach-{i}");
        let started = Instant::now();
        let c = host.run(&name, &["sleep", "infinity"]);
        while !ping(&remote.netns, &c.ip, 1, &["-W", "0.2"]) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "{} never became reachable from another host",
                c.ip
            );
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        host.ferry_ok(&["rm", "-f", &name]);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    let mut table = Table::new(
        format!("cross-host: `ferry run` to reachable from another host, {RUNS} runs"),
        &["p50 ms", "p99 ms", "max ms"],
    );
    table.row(vec![
        format!("{:.0}", at(0.5)),
        format!("{:.0}", at(0.99)),
        format!("{:.0}", at(1.0)),
    ]);
    Ok(table)
}
