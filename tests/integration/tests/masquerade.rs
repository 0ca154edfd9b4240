//! Outbound masquerade: containers reach a server in the client namespace
//! (the outside world) with the host's address, through the datapath, with
//! `ip_forward` off and no netfilter rule.

use std::{process::Stdio, thread, time::Duration};

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, World, check, ping, rulesets, tcp_exchange, wait_until,
};

/// A server in the client namespace, ended with its children on drop.
fn server(world: &World, args: &[&str]) -> Background {
    let mut cmd = world.in_client("socat", args);
    cmd.stderr(Stdio::null());
    Background::spawn(cmd)
}

#[test]
fn tcp_udp_and_ping_leave_through_masquerade() {
    let world = World::new();
    let host = world.host_ns_path();
    let rules_before = rulesets(&host);
    let c = world.run("out", &["sleep", "infinity"]);
    let _tcp = server(
        &world,
        &[
            "TCP-LISTEN:7100,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT",
        ],
    );
    let _udp = server(&world, &["UDP-RECVFROM:7101,fork", "EXEC:cat"]);

    // The server sees the host's uplink address and a masquerade port.
    let seen = tcp_exchange(&c.netns, CLIENT_IP, 7100, "");
    let mut parts = seen.split_whitespace();
    assert_eq!(
        parts.next(),
        Some(HOST_UPLINK_IP),
        "source seen by the server: {seen}"
    );
    let port: u16 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(
        (61000..=65535).contains(&port),
        "port {port} is outside the masquerade range"
    );

    let target = format!("UDP:{CLIENT_IP}:7101");
    let mut answer = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let out = ferry_integration::output(
                ferry_integration::in_netns(
                    &c.netns,
                    "sh",
                    &["-c", &format!("echo udp | socat -T 1 - {target}")],
                )
                .stderr(Stdio::null()),
            );
            answer = String::from_utf8_lossy(&out.stdout).into_owned();
            answer == "udp\n"
        }),
        "no UDP echo: {answer:?}"
    );
    assert!(
        ping(&c.netns, CLIENT_IP, 3, &[]),
        "ping through masquerade failed"
    );

    let forwarding = check(&mut world.in_host("sysctl", &["-n", "net.ipv4.ip_forward"]));
    assert_eq!(forwarding.trim(), "0");
    assert_eq!(
        rulesets(&host),
        rules_before,
        "masquerade changed netfilter rules"
    );
}

#[test]
fn many_concurrent_flows_and_port_reuse_after_close() {
    let world = World::new();
    let c = world.run("busy", &["sleep", "infinity"]);
    let _echo = server(
        &world,
        &["TCP-LISTEN:7102,fork,reuseaddr,backlog=128", "EXEC:cat"],
    );
    assert_eq!(tcp_exchange(&c.netns, CLIENT_IP, 7102, "warm\n"), "warm\n");

    let handles: Vec<_> = (0..40)
        .map(|i| {
            let ns = c.netns.clone();
            thread::spawn(move || tcp_exchange(&ns, CLIENT_IP, 7102, &format!("flow {i}\n")))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().expect("flow thread"), format!("flow {i}\n"));
    }
    for i in 0..30 {
        assert_eq!(
            tcp_exchange(&c.netns, CLIENT_IP, 7102, &format!("again {i}\n")),
            format!("again {i}\n")
        );
    }
}

#[test]
fn traffic_with_no_route_is_dropped_and_counted() {
    let world = World::new();
    let c = world.run("lost", &["sleep", "infinity"]);
    let before = world.drops("no_route");
    // The host namespace has no default route.
    assert!(!ping(&c.netns, "203.0.113.1", 2, &[]));
    assert!(
        world.drops("no_route") >= before + 2,
        "no_route did not count"
    );
}

/// Path MTU discovery through masquerade: the client namespace routes to a
/// "far" namespace over a 1280-byte link. The container's full-size TCP
/// segments get "fragmentation needed" from that router, addressed to the
/// host's masquerade address; only if ferry translates the error back to
/// the container does its TCP shrink its segments and the transfer finish.
#[test]
fn icmp_errors_reach_the_container_so_path_mtu_discovery_works() {
    let world = World::new();
    let far = ferry_integration::TempNetns::new(&format!("{}-far", world.name));
    world.client.ip(&[
        "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", &far.name,
    ]);
    world
        .client
        .ip(&["addr", "add", "10.210.0.1/24", "dev", "far0"]);
    world
        .client
        .ip(&["link", "set", "far0", "mtu", "1280", "up"]);
    far.ip(&["addr", "add", "10.210.0.2/24", "dev", "eth0"]);
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["route", "add", "default", "via", "10.210.0.1"]);
    check(
        &mut world
            .client
            .cmd("sysctl", &["-qw", "net.ipv4.ip_forward=1"]),
    );
    world
        .host
        .ip(&["route", "add", "10.210.0.0/24", "via", CLIENT_IP]);
    let sink = Background::spawn(far.cmd(
        "socat",
        &["-T", "10", "TCP-LISTEN:7200,reuseaddr", "SYSTEM:wc -c"],
    ));

    let c = world.run("big", &["sleep", "infinity"]);
    let before =
        ferry_integration::output(&mut world.in_host("ip", &["route", "get", "10.210.0.2"]));
    assert!(before.status.success());
    let out = ferry_integration::output(
        ferry_integration::in_netns(
            &c.netns,
            "sh",
            &[
                "-c",
                "head -c 200000 /dev/zero | socat -T 8 - TCP:10.210.0.2:7200,connect-timeout=3",
            ],
        )
        .stderr(Stdio::piped()),
    );
    drop(sink);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200000",
        "transfer through a 1280-byte link stalled: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pmtu = check(&mut ferry_integration::in_netns(
        &c.netns,
        "ip",
        &["route", "get", "10.210.0.2"],
    ));
    assert!(
        pmtu.contains("mtu 1280"),
        "the container never learnt the path MTU: {pmtu}"
    );
}

#[test]
fn port_unreachable_reaches_a_masqueraded_udp_socket() {
    let world = World::new();
    let c = world.run("udp", &["sleep", "infinity"]);
    // Nothing listens on 7999 in the client namespace: it answers with
    // ICMP port unreachable, which the container's socket must see.
    let out = ferry_integration::output(
        ferry_integration::in_netns(
            &c.netns,
            "sh",
            &[
                "-c",
                &format!("(echo a; sleep 1; echo b) | socat -T 3 - UDP:{CLIENT_IP}:7999"),
            ],
        )
        .stderr(Stdio::piped()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused"),
        "no port unreachable seen: {err}"
    );
}

#[test]
fn large_udp_datagrams_leave_through_masquerade_in_fragments() {
    let world = World::new();
    let c = world.run("bigudp", &["sleep", "infinity"]);
    let _echo = server(
        &world,
        &["-b", "8192", "UDP-RECVFROM:7103,fork", "EXEC:cat"],
    );
    world.assert_udp_round_trip(4000, &format!("{CLIENT_IP}:7103"), |script| {
        ferry_integration::in_netns(&c.netns, "sh", &["-c", script])
    });
}

/// ferry is the router hop between a container and the outside: TTL goes
/// down by one, and a packet that would expire gets ICMP time exceeded from
/// the host, so traceroute works from containers.
#[test]
fn the_host_is_a_router_hop_for_containers() {
    let world = World::new();
    let c = world.run("hops", &["sleep", "infinity"]);
    assert!(
        ping(&c.netns, CLIENT_IP, 1, &["-t", "2"]),
        "two hops should reach the client"
    );
    let out = ferry_integration::output(&mut ferry_integration::in_netns(
        &c.netns,
        "ping",
        &["-c", "1", "-W", "1", "-t", "1", CLIENT_IP],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Time to live exceeded"),
        "no time exceeded: {text}"
    );
}
