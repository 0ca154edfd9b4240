//! macvlan networks: containers whose `eth0` is a macvlan slave of the
//! uplink instead of a veth, with everything a bridge network has:
//! published ports with the client's own address, masquerade, the host and
//! the network's other containers both ways, isolation from other
//! networks, anti-spoofing, nothing reachable from outside but published
//! ports, and nothing left behind.

use std::{process::Stdio, time::Duration};

use ferry_integration::{
    CLIENT_IP, Container, HOST_UPLINK_IP, World, check, in_netns, output, ping, wait_until,
};
use serde_json::Value;

fn fails(world: &World, args: &[&str], says: &str) {
    let out = world.ferry(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(says), "{args:?}: {says:?} missing from: {err}");
}

/// `ferry network create -d macvlan -o parent=uplink0 <flags> mv`.
fn create_mv(world: &World, flags: &[&str]) {
    let mut args = vec!["network", "create", "-d", "macvlan", "-o", "parent=uplink0"];
    args.extend_from_slice(flags);
    args.push("mv");
    world.ferry_ok(&args);
}

fn reaches(from: &std::path::Path, to: &str) -> bool {
    ping(from, to, 1, &[])
}

/// A container on `net` answering TCP on port 80 with the peer's address.
fn responder(world: &World, name: &str, net: &str, publish: &[&str]) -> Container {
    let mut flags = vec!["--network", net];
    for p in publish {
        flags.extend(["-p", p]);
    }
    world.run_with(
        name,
        &flags,
        &[
            "socat",
            "TCP-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo peer $SOCAT_PEERADDR",
        ],
    )
}

/// What a TCP connection from the namespace at `ns` to `ip:port` reads.
fn answer(ns: &std::path::Path, ip: &str, port: u16) -> String {
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let mut got = String::new();
    wait_until(Duration::from_secs(5), || {
        let out = output(in_netns(ns, "socat", &["-T", "2", "-", &target]).stdin(Stdio::null()));
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        !got.is_empty()
    });
    got
}

/// The MAC in what `ip -o link show IFACE` (the command given) prints.
fn mac_of(mut show: std::process::Command) -> String {
    let link = check(&mut show);
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_owned()
}

fn egress_filters(world: &World) -> String {
    check(&mut world.in_host("tc", &["filter", "show", "dev", "uplink0", "egress"]))
}

#[test]
fn macvlan_networks_are_checked_and_leave_nothing_behind() {
    let mut world = World::new();
    let before = world.footprint();
    for (args, says) in [
        (
            vec!["network", "create", "-d", "macvlan", "mv"],
            "needs -o parent=IFACE",
        ),
        (
            vec![
                "network",
                "create",
                "-d",
                "macvlan",
                "-o",
                "parent=nope0",
                "mv",
            ],
            "macvlan parent nope0 is not one of ferryd's uplinks (uplink0)",
        ),
        (
            vec![
                "network",
                "create",
                "-d",
                "macvlan",
                "-o",
                "parent=uplink0",
                "-o",
                "macvlan_mode=bridge",
                "mv",
            ],
            "macvlan_mode \"bridge\" is not supported",
        ),
        (
            vec!["network", "create", "-d", "ipvlan", "mv"],
            "unknown network driver \"ipvlan\"",
        ),
        (
            vec!["network", "create", "-o", "parent=uplink0", "mv"],
            "unsupported network option",
        ),
    ] {
        fails(&world, &args, says);
    }
    assert_eq!(world.footprint(), before, "failures left something behind");
    assert!(egress_filters(&world).is_empty());

    create_mv(&world, &["--subnet", "10.93.0.0/24"]);
    let out = world.ferry_ok(&["network", "inspect", "mv"]);
    let nets: Vec<Value> = serde_json::from_str(&out).expect("network JSON");
    assert_eq!(nets[0]["Driver"], "macvlan");
    assert_eq!(nets[0]["Options"]["parent"], "uplink0");
    assert!(egress_filters(&world).contains("uplink_egress"));

    let web = responder(&world, "web", "mv", &["8080:80"]);
    let link = check(&mut in_netns(
        &web.netns,
        "ip",
        &["-d", "link", "show", "eth0"],
    ));
    assert!(link.contains("macvlan mode private"), "{link}");
    assert!(answer(&world.client_ns_path(), HOST_UPLINK_IP, 8080).contains(CLIENT_IP));
    // A restarted ferryd serves the parent again, in place.
    world.stop_ferryd();
    world.start_ferryd();
    assert_eq!(
        egress_filters(&world)
            .lines()
            .filter(|l| l.contains("name uplink_egress"))
            .count(),
        1,
        "{}",
        egress_filters(&world)
    );
    assert!(answer(&world.client_ns_path(), HOST_UPLINK_IP, 8080).contains(CLIENT_IP));
    world.ferry_ok(&["rm", "-f", "web"]);
    world.ferry_ok(&["network", "rm", "mv"]);
    assert!(
        egress_filters(&world).is_empty(),
        "the uplink still has the egress program"
    );
    assert_eq!(
        world.footprint(),
        before,
        "the network left something behind"
    );
}

#[test]
fn macvlan_containers_have_what_bridge_containers_have() {
    let world = World::new();
    create_mv(&world, &[]);
    let web = responder(&world, "web", "mv", &["8080:80"]);
    let peer = world.run_with("peer", &["--network", "mv"], &["sleep", "infinity"]);
    let other = world.run("other", &["sleep", "infinity"]);
    let client = world.client_ns_path();
    let host = world.host_ns_path();

    // Published port: the container sees the client's own address.
    let got = answer(&client, HOST_UPLINK_IP, 8080);
    assert!(got.contains(&format!("peer {CLIENT_IP}")), "{got}");
    // ...from the host too: the container's address directly, and
    // localhost:8080 from a process the socket hooks do not see (through
    // loopback, masqueraded to the gateway address).
    let got = answer(&host, &web.ip, 80);
    assert!(got.contains("peer "), "host to container: {got:?}");
    let got = answer(&host, "127.0.0.1", 8080);
    assert!(got.contains("peer 169.254.1.1"), "localhost:8080: {got:?}");
    // The network's containers, the host and the outside (masquerade).
    assert!(
        reaches(&peer.netns, &web.ip),
        "no traffic inside the network"
    );
    assert!(
        reaches(&peer.netns, HOST_UPLINK_IP),
        "the host is unreachable"
    );
    assert!(
        reaches(&host, &peer.ip),
        "the container is unreachable from the host"
    );
    assert!(reaches(&peer.netns, CLIENT_IP), "no masquerade");
    let got = answer(&peer.netns, CLIENT_IP, 9);
    assert!(got.is_empty(), "nothing listens on the client's port 9");

    // Isolation from another network, both ways, counted.
    let denied = world.drops("policy_denied");
    assert!(!reaches(&other.netns, &web.ip));
    assert!(!reaches(&peer.netns, &other.ip));
    assert!(world.drops("policy_denied") > denied);

    // From outside, only published ports: routed to the host, or sent to
    // the slave's own MAC, the container's address gets nothing.
    let mac = mac_of(in_netns(&web.netns, "ip", &["-o", "link", "show", "eth0"]));
    let direct = world.drops("outside_to_container");
    check(&mut world.in_client(
        "ip",
        &[
            "neigh",
            "replace",
            &web.ip,
            "lladdr",
            mac.trim(),
            "dev",
            "eth0",
        ],
    ));
    check(&mut world.in_client("ip", &["route", "add", &web.ip, "dev", "eth0"]));
    assert!(
        !reaches(&client, &web.ip),
        "the outside reached a container"
    );
    assert!(world.drops("outside_to_container") > direct);

    // Anti-spoofing: another source address, another source MAC.
    let spoofed = world.drops("spoofed_ip");
    check(&mut in_netns(
        &peer.netns,
        "ip",
        &["addr", "add", "10.77.0.9/32", "dev", "eth0"],
    ));
    assert!(!ping(&peer.netns, CLIENT_IP, 1, &["-I", "10.77.0.9"]));
    assert!(world.drops("spoofed_ip") > spoofed);
    check(&mut in_netns(
        &peer.netns,
        "ip",
        &["addr", "del", "10.77.0.9/32", "dev", "eth0"],
    ));
    let spoofed = world.drops("spoofed_mac");
    check(&mut in_netns(
        &peer.netns,
        "ip",
        &["link", "set", "eth0", "address", "02:42:de:ad:be:ef"],
    ));
    // A new address flushes the neighbour table; put the gateway back.
    let gateway_mac = mac_of(world.in_host("ip", &["-o", "link", "show", "uplink0"]));
    check(&mut in_netns(
        &peer.netns,
        "ip",
        &[
            "neigh",
            "replace",
            "169.254.1.1",
            "lladdr",
            &gateway_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ));
    assert!(!reaches(&peer.netns, CLIENT_IP));
    assert!(world.drops("spoofed_mac") > spoofed);

    // Counted like a veth container's traffic.
    let stats = world.stats("web");
    for counter in ["RxPackets", "TxPackets"] {
        assert!(stats[counter].as_u64().unwrap_or(0) > 0, "{stats}");
    }
}
