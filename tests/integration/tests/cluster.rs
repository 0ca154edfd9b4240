//! Containers on different hosts, as a user of `ferryd --cluster` meets
//! them: hosts are namespaces on one segment, each with its own ferryd,
//! joined through a three-member etcd. Containers of the default network
//! reach each other (and the other hosts) by their own addresses, natively
//! routed on one segment, through VXLAN across a router; isolation holds
//! across hosts; a dead host is forgotten within its lease and comes back
//! with its block; losing an etcd member, or quorum, stops nothing that
//! runs.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ferry_integration::{
    Background, Container, World, check,
    cluster::{Etcd, FABRIC_NET, Fabric, Router},
    in_netns, map_of, output, ping, tcp_exchange, wait_until,
};

/// A server in `ns` answering each TCP connection on `port` with `tag`
/// and the peer's address.
fn tcp_responder(ns: &Path, port: u16, tag: &str) -> Background {
    Background::spawn(in_netns(
        ns,
        "socat",
        &[
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            &format!("SYSTEM:echo {tag} $SOCAT_PEERADDR"),
        ],
    ))
}

/// The same over UDP: each datagram is answered with the sender's address.
fn udp_responder(ns: &Path, port: u16) -> Background {
    Background::spawn(in_netns(
        ns,
        "socat",
        &[
            &format!("UDP-RECVFROM:{port},fork,reuseaddr"),
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
    ))
}

/// What a UDP datagram from `ns` to `ip:port` gets back (empty: nothing).
fn udp_exchange(ns: &Path, ip: &str, port: u16) -> String {
    let target = format!("UDP:{ip}:{port}");
    let mut got = String::new();
    wait_until(Duration::from_secs(8), || {
        let out = output(&mut in_netns(
            ns,
            "sh",
            &["-c", &format!("echo hi | socat -T 1 - {target}")],
        ));
        got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        !got.is_empty()
    });
    got
}

/// TCP and UDP from container `local` (on host `a`, at `FABRIC_NET.11`)
/// to `remote` on another host, and TCP between host `a` itself and
/// `remote` both ways: each receiver sees the sender's own address.
fn assert_addresses_preserved(a: &World, local: &Container, remote: &Container) {
    let _tcp = tcp_responder(&remote.netns, 80, "remote");
    assert_eq!(
        tcp_exchange(&local.netns, &remote.ip, 80, "x").trim(),
        format!("remote {}", local.ip)
    );
    let _udp = udp_responder(&remote.netns, 5300);
    assert_eq!(udp_exchange(&local.netns, &remote.ip, 5300), local.ip);
    let host_a = format!("{FABRIC_NET}.11");
    assert_eq!(
        tcp_exchange(&a.host_ns_path(), &remote.ip, 80, "x").trim(),
        format!("remote {host_a}")
    );
    let _on_host = tcp_responder(&a.host_ns_path(), 7000, "host-a");
    assert_eq!(
        tcp_exchange(&remote.netns, &host_a, 7000, "x").trim(),
        format!("host-a {}", remote.ip)
    );
}

fn reaches(from: &Container, to: &str) -> bool {
    ping(&from.netns, to, 1, &["-W", "1"])
}

fn eventually_reaches(from: &Container, to: &str) -> bool {
    wait_until(Duration::from_secs(10), || reaches(from, to))
}

fn in_block(ip: &str, block: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().expect("container IP");
    let block: ipnet::Ipv4Net = block.parse().expect("block");
    block.contains(&ip)
}

/// Entries of the `remotes` map.
fn remotes(world: &World) -> u64 {
    map_of(&world.datapath(), "remotes")["Entries"]
        .as_u64()
        .expect("remotes entries")
}

#[test]
fn containers_on_two_hosts_reach_each_other_by_their_own_addresses() {
    let fabric = Fabric::new();
    let etcd = Etcd::start(&fabric, 3);
    let a = World::cluster_member(&fabric, &etcd.url(), 11, &[]);
    let b = World::cluster_member(&fabric, &etcd.url(), 12, &[]);
    a.wait_for_member(&b.name, "native");
    b.wait_for_member(&a.name, "native");
    let (block_a, block_b) = (a.block(), b.block());
    assert_ne!(block_a, block_b, "each node claims a block of its own");
    let nodes = a.nodes();
    assert_eq!(nodes["Connected"], true, "{nodes}");
    let lease = nodes["Members"][1]["LeaseTtl"].as_i64().unwrap_or(-1);
    assert!(lease > 0, "a member's lease time is shown: {nodes}");

    let ca = a.run("ca", &["sleep", "infinity"]);
    let cb = b.run("cb", &["sleep", "infinity"]);
    assert!(in_block(&ca.ip, &block_a), "{} not in {block_a}", ca.ip);
    assert!(in_block(&cb.ip, &block_b), "{} not in {block_b}", cb.ip);
    // Each side's forwarding: the other's block and address.
    assert_eq!(remotes(&a), 2);
    assert!(
        a.host_routes()
            .contains(&format!("{block_b} via {FABRIC_NET}.12 dev fab0")),
        "{}",
        a.host_routes()
    );

    // ping both ways, by the containers' own addresses.
    assert!(
        eventually_reaches(&ca, &cb.ip),
        "ca cannot ping cb\n{}",
        a.ferry_ok(&["datapath"])
    );
    assert!(reaches(&cb, &ca.ip), "cb cannot ping ca");

    // TCP and UDP: the receiver sees the sender's own address.
    assert_addresses_preserved(&a, &ca, &cb);

    // Isolation: a user-defined network stays on its host.
    a.ferry_ok(&["network", "create", "iso"]);
    let ci = a.run_with("ci", &["--network", "iso"], &["sleep", "infinity"]);
    let denied = a.drops("policy_denied");
    assert!(
        !reaches(&ci, &cb.ip),
        "a user network reached another host's container"
    );
    assert!(a.drops("policy_denied") > denied, "the refusal is counted");

    for w in [&a, &b] {
        for reason in [
            "redirect_failed",
            "no_route",
            "outside_to_container",
            "spoofed_ip",
        ] {
            assert_eq!(w.drops(reason), 0, "{} dropped {reason}", w.name);
        }
    }
}

#[test]
fn nodes_starting_at_once_claim_blocks_of_their_own() {
    let fabric = Fabric::new();
    let etcd = Etcd::start(&fabric, 1);
    let url = etcd.url();
    let worlds: Vec<World> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3u8)
            .map(|i| {
                let (fabric, url) = (&fabric, &url);
                s.spawn(move || World::cluster_member(fabric, url, 11 + i, &[]))
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("a member failed to start"))
            .collect()
    });
    let mut blocks: Vec<String> = worlds.iter().map(World::block).collect();
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), 3, "blocks shared: {blocks:?}");
    for w in &worlds {
        for other in &worlds {
            if other.name != w.name {
                w.wait_for_member(&other.name, "native");
            }
        }
    }
}

#[test]
fn a_dead_host_is_forgotten_within_its_lease_and_comes_back_with_its_block() {
    const TTL: u64 = 3;
    let ttl = TTL.to_string();
    let flags = ["--cluster-lease-ttl", ttl.as_str()];
    let fabric = Fabric::new();
    let etcd = Etcd::start(&fabric, 3);
    let a = World::cluster_member(&fabric, &etcd.url(), 11, &flags);
    let mut b = World::cluster_member(&fabric, &etcd.url(), 12, &flags);
    a.wait_for_member(&b.name, "native");
    let block_b = b.block();
    let ca = a.run("ca", &["sleep", "infinity"]);
    let cb = b.run("cb", &["sleep", "infinity"]);
    assert!(eventually_reaches(&ca, &cb.ip));

    b.kill_ferryd();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(TTL + 5), || remotes(&a) == 0),
        "host b's entries outlived its lease: {}",
        a.ferry_ok(&["node", "ls"])
    );
    let forgotten = killed.elapsed();
    // The lease runs out TTL after the last renewal, which came at most a
    // third of it before the kill; etcd checks expiry every 500 ms.
    assert!(
        forgotten < Duration::from_secs(TTL + 2),
        "forgotten after {forgotten:?}"
    );
    assert!(!a.host_routes().contains(&block_b), "{}", a.host_routes());
    eprintln!("host b forgotten {forgotten:?} after its ferryd died (lease TTL {TTL} s)");

    b.start_ferryd();
    assert_eq!(b.block(), block_b, "a restarted node gets its block back");
    a.wait_for_member(&b.name, "native");
    assert_eq!(
        b.container("cb").ip,
        cb.ip,
        "its containers keep their addresses"
    );
    assert!(eventually_reaches(&ca, &cb.ip), "ca cannot reach cb again");
    assert!(reaches(&cb, &ca.ip));
}

#[test]
fn losing_an_etcd_member_or_quorum_stops_nothing_that_runs() {
    let fabric = Fabric::new();
    let mut etcd = Etcd::start(&fabric, 3);
    let a = World::cluster_member(&fabric, &etcd.url(), 11, &[]);
    let b = World::cluster_member(&fabric, &etcd.url(), 12, &[]);
    a.wait_for_member(&b.name, "native");
    b.wait_for_member(&a.name, "native");
    let ca = a.run("ca", &["sleep", "infinity"]);
    let cb = b.run("cb", &["sleep", "infinity"]);
    assert!(eventually_reaches(&ca, &cb.ip));

    // One member down: nobody notices.
    etcd.kill(0);
    let ca2 = a.run("ca2", &["sleep", "infinity"]);
    assert!(
        eventually_reaches(&cb, &ca2.ip),
        "cb cannot reach a new container"
    );
    assert!(reaches(&ca, &cb.ip));
    assert!(
        wait_until(Duration::from_secs(15), || a.nodes()["Connected"] == true),
        "a lost etcd with two members of three up: {}",
        a.nodes()
    );

    // Quorum lost: forwarding goes on with what is known, and new local
    // containers still work.
    etcd.kill(1);
    assert!(
        wait_until(Duration::from_secs(30), || a.nodes()["Connected"] == false),
        "a did not notice etcd's quorum loss: {}",
        a.nodes()
    );
    assert_eq!(remotes(&a), 2, "a kept its members");
    assert!(reaches(&ca, &cb.ip), "traffic stopped without quorum");
    let ca3 = a.run("ca3", &["sleep", "infinity"]);
    assert!(
        eventually_reaches(&cb, &ca3.ip),
        "a new container is unreachable"
    );
    let log = a.ferryd_log();
    assert!(log.contains("etcd unreachable"), "{log}");

    // Quorum back: connected again, the same members.
    etcd.restart(1);
    assert!(
        wait_until(Duration::from_secs(30), || a.nodes()["Connected"] == true),
        "a did not reconnect: {}",
        a.nodes()
    );
    a.wait_for_member(&b.name, "native");
    assert!(reaches(&ca3, &cb.ip));
}

#[test]
fn a_node_restarts_with_its_block_while_etcd_is_down() {
    let fabric = Fabric::new();
    let mut etcd = Etcd::start(&fabric, 1);
    let mut a = World::cluster_member(&fabric, &etcd.url(), 11, &[]);
    let b = World::cluster_member(&fabric, &etcd.url(), 12, &[]);
    a.wait_for_member(&b.name, "native");
    b.wait_for_member(&a.name, "native");
    let block_a = a.block();
    let ca = a.run("ca", &["sleep", "infinity"]);
    let cb = b.run("cb", &["sleep", "infinity"]);
    assert!(eventually_reaches(&ca, &cb.ip));

    etcd.kill(0);
    a.stop_ferryd();
    a.start_ferryd();
    assert_eq!(a.block(), block_a, "the saved block");
    assert_eq!(a.nodes()["Connected"], false, "{}", a.nodes());
    assert_eq!(remotes(&a), 2, "the members forwarding knew stay");
    assert!(reaches(&ca, &cb.ip) && reaches(&cb, &ca.ip));
    let ca2 = a.run("ca2", &["sleep", "infinity"]);
    assert!(
        eventually_reaches(&cb, &ca2.ip),
        "a new container is unreachable"
    );

    etcd.restart(0);
    assert!(
        wait_until(Duration::from_secs(30), || a.nodes()["Connected"] == true),
        "a did not join once etcd was back: {}",
        a.nodes()
    );
    a.wait_for_member(&b.name, "native");
    b.wait_for_member(&a.name, "native");
    assert!(reaches(&cb, &ca2.ip));
}

#[test]
fn a_node_that_cannot_join_says_why_and_leaves_nothing() {
    let fabric = Fabric::new();
    // Nothing listens there.
    let nowhere = format!("etcd://{FABRIC_NET}.250:2379");
    let mut world = World::with_subnet_unstarted(None);
    fabric.plug(&world.host, "fab0", 11);
    world.extra_args = ["--cluster", &nowhere, "--uplink", "fab0"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let bad = [
        ("http://x:2379", "is not etcd://HOST:PORT"),
        ("etcd://x", "is not HOST:PORT"),
    ];
    for (spec, says) in bad {
        let out = output(&mut world.ferryd_command_with(&[("--cluster", spec)]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{spec}: {err}");
    }
    let out = output(
        world
            .ferryd_command()
            .args(["--cluster-address", "10.9.9.9"]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("--cluster-address 10.9.9.9 is on none of the uplinks"),
        "{err}"
    );
    let started = Instant::now();
    let out = output(&mut world.ferryd_command());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("cannot join the cluster at http://10.201.0.250:2379"),
        "{err}"
    );
    eprintln!("gave up joining after {:?}", started.elapsed());
    assert!(!world.pin_dir.exists(), "pins left behind by a failed join");
    assert!(!world.dir.join("state/cluster.json").exists());
}

/// What `bytes` zero bytes sent over TCP from `ns` to `ip:port` (a
/// counting server) were counted as.
fn bulk(ns: &Path, ip: &str, port: u16, bytes: usize) -> String {
    let script =
        format!("head -c {bytes} /dev/zero | socat -T 5 - TCP:{ip}:{port},connect-timeout=2");
    let out = output(&mut in_netns(ns, "sh", &["-c", &script]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_host_on_another_subnet_is_reached_through_vxlan() {
    let fabric = Fabric::new();
    let far = Fabric::with_net("10.202.0");
    let router = Router::new(&fabric, &far);
    let etcd = Etcd::start(&fabric, 3);
    etcd.route(&far.cidr(), &format!("{FABRIC_NET}.1"));
    let a = World::cluster_member(&fabric, &etcd.url(), 11, &[]);
    a.host.ip(&[
        "route",
        "add",
        &far.cidr(),
        "via",
        &format!("{FABRIC_NET}.1"),
    ]);
    let mut c = World::cluster_member_unstarted(&far, &etcd.url(), 13, &[]);
    c.host
        .ip(&["route", "add", &fabric.cidr(), "via", "10.202.0.1"]);
    c.start_ferryd();
    a.wait_for_member(&c.name, "vxlan");
    c.wait_for_member(&a.name, "vxlan");
    // A member that never tunnels leaves C out, and keeps the full MTU.
    let n = World::cluster_member(&fabric, &etcd.url(), 15, &["--cluster-routing", "native"]);
    n.wait_for_member(&c.name, "unreachable");
    n.wait_for_member(&a.name, "native");
    let cn = n.run("cn", &["sleep", "infinity"]);
    let link = check(&mut in_netns(
        &cn.netns,
        "ip",
        &["-o", "link", "show", "eth0"],
    ));
    assert!(link.contains("mtu 1500"), "{link}");
    assert_eq!(remotes(&n), 2, "only a's entries");

    let ca = a.run("ca", &["sleep", "infinity"]);
    let cc = c.run("cc", &["sleep", "infinity"]);
    // Room for the tunnel's header inside the containers.
    let link = check(&mut in_netns(
        &ca.netns,
        "ip",
        &["-o", "link", "show", "eth0"],
    ));
    assert!(link.contains("mtu 1450"), "{link}");

    assert!(
        eventually_reaches(&ca, &cc.ip),
        "ca cannot ping cc through the tunnel\n{}",
        a.ferry_ok(&["datapath"])
    );
    assert!(reaches(&cc, &ca.ip), "cc cannot ping ca");
    // A full-size packet, not fragmented, fits.
    assert!(
        ping(&ca.netns, &cc.ip, 1, &["-M", "do", "-s", "1422"]),
        "a 1450-byte packet did not cross"
    );
    assert_addresses_preserved(&a, &ca, &cc);
    let _count = Background::spawn(in_netns(
        &cc.netns,
        "socat",
        &["TCP-LISTEN:81,fork,reuseaddr", "SYSTEM:wc -c"],
    ));
    wait_until(Duration::from_secs(5), || {
        !bulk(&ca.netns, &cc.ip, 81, 10).is_empty()
    });
    assert_eq!(
        bulk(&ca.netns, &cc.ip, 81, 4_000_000),
        "4000000",
        "bulk TCP through the tunnel"
    );

    let host_a = format!("{FABRIC_NET}.11");
    assert_eq!(c.drops("tunnel_refused"), 0);
    assert_eq!(a.drops("tunnel_refused"), 0);
    // Something that is not C (the router) tunnels a packet claiming to
    // be from C's container: refused, counted.
    let refused = a.drops("tunnel_refused");
    let r = &router.ns;
    r.ip(&[
        "link", "add", "vxs", "type", "vxlan", "id", "1", "remote", &host_a, "dstport", "4789",
        "dev", "eth0",
    ]);
    r.ip(&["addr", "add", &format!("{}/32", cc.ip), "dev", "vxs"]);
    r.ip(&["link", "set", "vxs", "up"]);
    r.ip(&["route", "add", &format!("{}/32", ca.ip), "dev", "vxs"]);
    r.ip(&[
        "neigh",
        "add",
        &ca.ip,
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "vxs",
        "nud",
        "permanent",
    ]);
    assert!(
        !ping(&r.path(), &ca.ip, 2, &["-I", &cc.ip]),
        "a forged tunnel packet got an answer"
    );
    assert!(
        a.drops("tunnel_refused") >= refused + 2,
        "forged tunnel packets not counted"
    );

    // It all went through the tunnel device.
    let stats = check(&mut a.in_host("ip", &["-s", "-j", "link", "show", "ferry_vxlan"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("ip -j");
    let tx = stats[0]["stats64"]["tx"]["bytes"].as_u64().unwrap_or(0);
    assert!(tx > 4_000_000, "{tx} bytes through ferry_vxlan: {stats}");
    for w in [&a, &c] {
        for reason in ["redirect_failed", "no_route"] {
            assert_eq!(w.drops(reason), 0, "{} dropped {reason}", w.name);
        }
    }
}
