//! Published ports: traffic from the client namespace (the outside world)
//! to `-p` ports reaches containers through the uplink program, with the
//! client's real address, no netfilter rule and no userland proxy.

use std::{process::Stdio, time::Duration};

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, World, check, map_of, output, rulesets, tcp_exchange,
    wait_for_echo, wait_until,
};

/// A container workload answering every TCP connection on `port` with
/// `reply` (a shell snippet; `$SOCAT_PEERADDR` is the client's address).
fn tcp_responder(port: u16, reply: &str) -> [String; 3] {
    [
        "socat".into(),
        format!("TCP-LISTEN:{port},fork,reuseaddr"),
        format!("SYSTEM:{reply}"),
    ]
}

fn run_with(world: &World, name: &str, publish: &[&str], cmd: &[String]) -> std::process::Output {
    let mut args = vec!["run", "-d", "--name", name];
    for p in publish {
        args.extend(["-p", p]);
    }
    args.push("--");
    args.extend(cmd.iter().map(String::as_str));
    world.ferry(&args)
}

fn run_ok(world: &World, name: &str, publish: &[&str], cmd: &[String]) {
    let out = run_with(world, name, publish, cmd);
    assert!(
        out.status.success(),
        "ferry run {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        world.ferryd_log()
    );
}

/// The answer to a TCP connection from the client namespace, or `None`.
fn from_client(world: &World, ip: &str, port: u16) -> Option<String> {
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let out = output(
        world
            .in_client("socat", &["-T", "2", "-", &target])
            .stdin(Stdio::null()),
    );
    (out.status.success() && !out.stdout.is_empty())
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn http_to_a_published_port_reaches_the_container_with_the_client_address() {
    let world = World::new();
    let host = world.host_ns_path();
    let rules_before = rulesets(&host);
    // socat unescapes its address, so no backslashes: curl accepts bare LFs.
    let reply = "echo HTTP/1.0 200 OK; echo; echo hello $SOCAT_PEERADDR";
    run_ok(&world, "web", &["8080:80"], &tcp_responder(80, reply));

    assert_eq!(
        world.ferry_ok(&["port", "web"]).trim(),
        "80/tcp -> 0.0.0.0:8080"
    );
    let url = format!("http://{HOST_UPLINK_IP}:8080/");
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let out = output(&mut world.in_client("curl", &["-sS", "--max-time", "2", &url]));
            body = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success()
        }),
        "no HTTP answer from {url}\n{}",
        world.ferryd_log()
    );
    // The container saw the client itself, not a proxy or the host.
    assert_eq!(body.trim(), format!("hello {CLIENT_IP}"));
    assert_eq!(
        rulesets(&host),
        rules_before,
        "publishing changed netfilter rules"
    );
}

#[test]
fn udp_through_a_published_port() {
    let world = World::new();
    let cmd = [
        "socat".to_owned(),
        "UDP-RECVFROM:53,fork".to_owned(),
        "EXEC:cat".to_owned(),
    ];
    run_ok(&world, "dns", &["5353:53/udp"], &cmd);
    assert_eq!(
        world.ferry_ok(&["port", "dns"]).trim(),
        "53/udp -> 0.0.0.0:5353"
    );
    let script = format!("echo over udp | socat -T 1 - UDP:{HOST_UPLINK_IP}:5353");
    let echoed = wait_for_echo(Duration::from_secs(5), 9, || {
        world.in_client("sh", &["-c", &script])
    });
    assert_eq!(echoed, "over udp\n");
}

#[test]
fn port_ranges_map_pairwise() {
    let world = World::new();
    let script = "socat TCP-LISTEN:9000,fork,reuseaddr SYSTEM:'echo nine-thousand' & \
                  socat TCP-LISTEN:9001,fork,reuseaddr SYSTEM:'echo nine-thousand-one' & wait";
    let cmd = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    run_ok(&world, "ranged", &["8000-8001:9000-9001"], &cmd);
    let ports = world.ferry_ok(&["port", "ranged"]);
    assert!(
        ports.contains("9000/tcp -> 0.0.0.0:8000") && ports.contains("9001/tcp -> 0.0.0.0:8001"),
        "{ports}"
    );
    assert!(wait_until(Duration::from_secs(5), || from_client(
        &world,
        HOST_UPLINK_IP,
        8000
    )
    .is_some()));
    assert_eq!(
        from_client(&world, HOST_UPLINK_IP, 8000).as_deref(),
        Some("nine-thousand\n")
    );
    assert_eq!(
        from_client(&world, HOST_UPLINK_IP, 8001).as_deref(),
        Some("nine-thousand-one\n")
    );
}

#[test]
fn thousands_of_published_ports_are_held_and_released() {
    // More host ports than the usual soft limit of open files: ferryd holds
    // a socket for each, so it must have raised its limit.
    let world = World::new();
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "wide",
        "-p",
        "20000-21999:20000-21999",
        "--",
        "sleep",
        "infinity",
    ]);
    let ports = world.ferry_ok(&["port", "wide"]);
    assert_eq!(ports.lines().count(), 2000);
    assert!(ports.contains("21999/tcp -> 0.0.0.0:21999"), "{ports}");
    assert_eq!(map_of(&world.datapath(), "portmap")["Entries"], 2000);
    world.ferry_ok(&["rm", "-f", "wide"]);
    let d = world.datapath();
    assert_eq!(map_of(&d, "portmap")["Entries"], 0);
    assert_eq!(map_of(&d, "port_stats")["Entries"], 0);
    // The host ports are free again.
    check(&mut world.in_host(
        "python3",
        &[
            "-c",
            "import socket; socket.socket().bind(('0.0.0.0', 21999))",
        ],
    ));
}

#[test]
fn a_publish_bound_to_one_host_address_answers_only_there() {
    let world = World::new();
    world
        .host
        .ip(&["addr", "add", "10.200.0.11/24", "dev", "uplink0"]);
    run_ok(
        &world,
        "bound",
        &["10.200.0.11:8081:80"],
        &tcp_responder(80, "echo bound"),
    );
    assert_eq!(
        world.ferry_ok(&["port", "bound"]).trim(),
        "80/tcp -> 10.200.0.11:8081"
    );
    assert!(wait_until(Duration::from_secs(5), || from_client(
        &world,
        "10.200.0.11",
        8081
    )
    .is_some()));
    assert_eq!(
        from_client(&world, HOST_UPLINK_IP, 8081),
        None,
        "reachable on another host address"
    );
}

#[test]
fn a_random_host_port_is_allocated_and_reported() {
    let world = World::new();
    run_ok(&world, "random", &["80"], &tcp_responder(80, "echo random"));
    let line = world.ferry_ok(&["port", "random"]);
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    assert!(wait_until(Duration::from_secs(5), || from_client(
        &world,
        HOST_UPLINK_IP,
        port
    )
    .is_some()));
}

/// What must not change when a publish is refused.
fn snapshot(world: &World) -> (String, usize, String) {
    let links = check(&mut world.in_host("ip", &["-o", "link", "show"]));
    let state = std::fs::read_dir(world.dir.join("state/containers")).map_or(0, |d| d.count());
    let ports = check(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(world.pin_dir.join("portmap")),
    );
    (links, state, ports)
}

#[test]
fn conflicting_and_bad_publishes_fail_clearly_and_leave_nothing() {
    let world = World::new();
    run_ok(
        &world,
        "first",
        &["8082:80"],
        &tcp_responder(80, "echo first"),
    );
    let before = snapshot(&world);

    let out = run_with(
        &world,
        "second",
        &["8082:80"],
        &tcp_responder(80, "echo second"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcp port 8082 is already published by container first"),
        "{err}"
    );
    assert_eq!(snapshot(&world), before);

    // A port a host process holds.
    let holder = Background::spawn(world.in_host("socat", &["TCP-LISTEN:8083", "EXEC:cat"]));
    let bound = wait_until(Duration::from_secs(5), || {
        check(&mut world.in_host("ss", &["-Htln", "sport = :8083"])).contains("8083")
    });
    let out = run_with(
        &world,
        "third",
        &["8083:80"],
        &tcp_responder(80, "echo third"),
    );
    drop(holder);
    assert!(bound, "the host process never bound 8083");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot publish tcp port 8083 on 0.0.0.0: it is already in use"),
        "{err}"
    );
    assert_eq!(snapshot(&world), before);

    let out = run_with(&world, "fourth", &["80:80/sctp"], &tcp_responder(80, "x"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid publish spec \"80:80/sctp\""), "{err}");
    assert_eq!(snapshot(&world), before);

    // A host process cannot take a published port.
    let out = output(&mut world.in_host("socat", &["-T", "1", "TCP-LISTEN:8082", "EXEC:cat"]));
    assert!(
        !out.status.success(),
        "a host process bound a published port"
    );
}

#[test]
fn removing_a_container_unpublishes_its_ports() {
    let world = World::new();
    run_ok(
        &world,
        "brief",
        &["8085:80"],
        &tcp_responder(80, "echo brief"),
    );
    assert!(wait_until(Duration::from_secs(5), || from_client(
        &world,
        HOST_UPLINK_IP,
        8085
    )
    .is_some()));
    world.ferry_ok(&["rm", "-f", "brief"]);
    assert_eq!(from_client(&world, HOST_UPLINK_IP, 8085), None);
    let ports = check(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(world.pin_dir.join("portmap")),
    );
    assert_eq!(ports.trim(), "[]", "portmap entry left");
    // The host port is free again.
    let server = Background::spawn(
        world.in_host("socat", &["TCP-LISTEN:8085,reuseaddr", "SYSTEM:echo host"]),
    );
    let answer = tcp_exchange(&world.host_ns_path(), HOST_UPLINK_IP, 8085, "");
    drop(server);
    assert_eq!(answer, "host\n");
}

#[test]
fn containers_cannot_be_reached_directly_from_outside() {
    let world = World::new();
    let c = world.run(
        "hidden",
        &[
            "socat",
            "TCP-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo hidden",
        ],
    );
    // Even a client that routes the container subnet to the host: only
    // published ports lead in. The XDP prefilter drops the rest early.
    world
        .client
        .ip(&["route", "add", "10.89.0.0/24", "via", HOST_UPLINK_IP]);
    let before = world.drops("outside_to_container");
    assert_eq!(
        from_client(&world, &c.ip, 80),
        None,
        "a container was reachable from outside"
    );
    assert!(
        world.drops("outside_to_container") > before,
        "the prefilter did not count the drop"
    );
    // bpftool lists XDP attachments by program id: resolve it.
    let net = check(&mut world.in_host("bpftool", &["net", "show"]));
    let id = net
        .lines()
        .find(|l| l.starts_with("uplink0") && l.contains(" id "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no XDP program on uplink0: {net}"));
    let prog = check(std::process::Command::new("bpftool").args(["prog", "show", "id", id]));
    assert!(prog.contains("name xdp_prefilter"), "{prog}");
}

/// A 4000-byte UDP datagram crosses 1500-byte links in fragments, both
/// ways: only the first fragment carries the ports, the rest must follow
/// its translation.
#[test]
fn large_udp_datagrams_cross_a_published_port_in_fragments() {
    let world = World::new();
    let cmd = [
        "socat".to_owned(),
        "-b".to_owned(),
        "8192".to_owned(),
        "UDP-RECVFROM:53,fork".to_owned(),
        "EXEC:cat".to_owned(),
    ];
    run_ok(&world, "bigdns", &["5356:53/udp"], &cmd);
    world.assert_udp_round_trip(4000, &format!("{HOST_UPLINK_IP}:5356"), |script| {
        world.in_client("sh", &["-c", script])
    });
}

#[test]
fn a_publish_on_every_address_covers_addresses_added_later() {
    let world = World::new();
    run_ok(
        &world,
        "late",
        &["8090:80"],
        &tcp_responder(80, "echo late"),
    );
    assert!(wait_until(Duration::from_secs(5), || from_client(
        &world,
        HOST_UPLINK_IP,
        8090
    )
    .is_some()));
    // An address the host gets after the publish.
    world
        .host
        .ip(&["addr", "add", "10.200.0.12/24", "dev", "uplink0"]);
    assert!(
        wait_until(Duration::from_secs(5), || from_client(
            &world,
            "10.200.0.12",
            8090
        )
        .is_some()),
        "the new host address does not serve the published port"
    );
}

/// An ICMP error the container itself sends about a published flow (here:
/// port unreachable, nothing listens behind the UDP publish) goes out
/// translated back to the published address, so the client's connected
/// socket sees it; counted as the container's traffic.
#[test]
fn a_containers_port_unreachable_reaches_the_client_of_a_published_port() {
    let world = World::new();
    run_ok(
        &world,
        "silent",
        &["5400:5400/udp"],
        &["sleep".into(), "infinity".into()],
    );
    let tx_before = world.inspect("silent")["Ferry"]["Counters"]["TxPackets"]
        .as_u64()
        .unwrap_or(0);
    let script = format!("(echo a; sleep 1; echo b) | socat -T 3 - UDP:{HOST_UPLINK_IP}:5400");
    let out = output(
        world
            .in_client("sh", &["-c", &script])
            .stdin(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused"),
        "the container's port unreachable did not reach the client: {err}"
    );
    let tx = world.inspect("silent")["Ferry"]["Counters"]["TxPackets"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        tx > tx_before,
        "the ICMP error was not counted as the container's"
    );
}
