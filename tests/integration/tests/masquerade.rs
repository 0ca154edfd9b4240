//! Outbound masquerade: containers reach a server in the client namespace
//! (the outside world) with the host's address, through the datapath, with
//! `ip_forward` off and no netfilter rule.

use std::{
    process::{Child, Stdio},
    thread,
    time::Duration,
};

use ferry_integration::{
    CLIENT_IP, HOST_UPLINK_IP, World, check, ping, rulesets, tcp_exchange, wait_until,
};

/// A server in the client namespace, killed (by PID) on drop.
struct Server(Child);

impl Server {
    fn start(world: &World, args: &[&str]) -> Self {
        Self(
            world
                .in_client("socat", args)
                .stderr(Stdio::null())
                .spawn()
                .expect("server"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tcp_udp_and_ping_leave_through_masquerade() {
    let world = World::new();
    let host = world.host_ns_path();
    let rules_before = rulesets(&host);
    let c = world.run("out", &["sleep", "infinity"]);
    let _tcp = Server::start(
        &world,
        &[
            "TCP-LISTEN:7100,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT",
        ],
    );
    let _udp = Server::start(&world, &["UDP-RECVFROM:7101,fork", "EXEC:cat"]);

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
    let _echo = Server::start(
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
