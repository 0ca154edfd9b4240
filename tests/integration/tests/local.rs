//! Local clients: host processes reach published ports on `localhost` and
//! on the host's addresses, and containers reach published ports on the
//! host's addresses (hairpin), through the cgroup socket hooks: translated
//! at connect time, with no proxy, and never outside the namespaces ferry
//! serves.

use std::{process::Stdio, time::Duration};

use ferry_integration::{HOST_UPLINK_IP, World, check, join_cgroup, output, wait_until};

fn responder(port: u16, reply: &str) -> [String; 3] {
    [
        "socat".into(),
        format!("TCP-LISTEN:{port},fork,reuseaddr"),
        format!("SYSTEM:{reply}"),
    ]
}

fn run_published(world: &World, name: &str, publish: &str, cmd: &[String]) {
    let mut args = vec!["run", "-d", "--name", name, "-p", publish, "--"];
    args.extend(cmd.iter().map(String::as_str));
    world.ferry_ok(&args);
}

/// What a TCP connection made by `cmd` (a socat client) got back, if any.
fn answer(cmd: &mut std::process::Command) -> Option<String> {
    let out = output(cmd.stdin(Stdio::null()).stderr(Stdio::null()));
    (out.status.success() && !out.stdout.is_empty())
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `word` to 127.0.0.1:`port` over UDP from a shell `sh` makes
/// (given its arguments), until it comes back or 5 s pass: whether it
/// came back, and what came back last.
fn udp_echo(
    sh: impl Fn(&[&str]) -> std::process::Command,
    word: &str,
    port: u16,
) -> (bool, String) {
    let script = format!("echo {word} | socat -T 1 - UDP:127.0.0.1:{port}");
    let mut got = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        let out = output(sh(&["-c", &script]).stderr(Stdio::null()));
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        got == format!("{word}\n")
    });
    (ok, got)
}

fn tcp(addr: &str, port: u16) -> String {
    format!("TCP:{addr}:{port},connect-timeout=2")
}

#[test]
fn host_processes_reach_a_published_port_on_localhost_and_host_addresses() {
    let world = World::new();
    run_published(
        &world,
        "web",
        "8080:80",
        &responder(80, "echo HTTP/1.0 200 OK; echo; echo hello"),
    );
    for addr in ["127.0.0.1", HOST_UPLINK_IP] {
        let url = format!("http://{addr}:8080/");
        let mut seen = String::new();
        let ok = wait_until(Duration::from_secs(5), || {
            let out = output(&mut world.in_host(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "2",
                    "-w",
                    "|%{remote_ip}:%{remote_port}",
                    &url,
                ],
            ));
            seen = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success()
        });
        assert!(ok, "no answer at {url}: {seen}\n{}", world.ferryd_log());
        // The body came from the container; getpeername still names the
        // published address the client asked for.
        assert_eq!(seen.trim(), format!("hello\n|{addr}:8080"));
    }
}

/// A process outside the hooked cgroup connects untranslated: its packets
/// cross `lo`, where `local_ingress` translates them (DNAT to the
/// container, masquerade to the gateway address) and the container's
/// replies come back through `from_container` to `lo`.
#[test]
fn sockets_outside_the_hooked_cgroup_reach_published_ports_through_lo() {
    let mut world = World::new();
    run_published(
        &world,
        "web",
        "8089:80",
        &responder(80, "echo web $SOCAT_PEERADDR"),
    );
    let echo = ["socat", "UDP-RECVFROM:53,fork", "EXEC:cat"].map(String::from);
    run_published(&world, "dns", "5355:53/udp", &echo);
    for addr in [HOST_UPLINK_IP, "127.0.0.1"] {
        let mut got = None;
        let ok = wait_until(Duration::from_secs(5), || {
            // `world.host.cmd`, unlike `in_host`, stays in this test's own
            // cgroup, outside the hooks.
            got = answer(&mut world.host.cmd("socat", &["-T", "2", "-", &tcp(addr, 8089)]));
            got.is_some()
        });
        assert!(
            ok,
            "no answer at {addr}:8089\n{}",
            world.ferry_ok(&["datapath"])
        );
        // The container sees the gateway address, as behind Docker's proxy.
        assert_eq!(got.as_deref(), Some("web 169.254.1.1\n"));
    }
    // Many connections in a row: each gets its own masquerade port, and
    // every one is answered.
    let script =
        "for i in $(seq 40); do socat -T 2 - TCP:127.0.0.1:8089,connect-timeout=2 </dev/null; done";
    let out = output(&mut world.host.cmd("sh", &["-c", script]));
    let answers = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        answers.lines().filter(|l| *l == "web 169.254.1.1").count(),
        40,
        "{answers}\n{}",
        world.ferry_ok(&["datapath"])
    );
    // `world.host.cmd` stays outside the hooks, as above.
    let (ok, got) = udp_echo(|args| world.host.cmd("sh", args), "outside", 5355);
    assert!(ok, "no UDP echo through lo: {got:?}");
    // The flows are tracked, both halves of each, and nothing was dropped.
    let flows = world.ferry_ok(&["conntrack", "list", "--json"]);
    assert!(flows.contains("169.254.1.1"), "{flows}");
    assert_eq!(world.drops("nat_failed"), 0);

    // `ferryd reset` takes the program off `lo` and puts lo's settings back.
    let lo_settings = |world: &World| {
        ["route_localnet", "accept_local"].map(|key| {
            check(
                &mut world
                    .host
                    .cmd("sysctl", &["-n", &format!("net.ipv4.conf.lo.{key}")]),
            )
            .trim()
            .to_owned()
        })
    };
    assert_eq!(lo_settings(&world), ["1", "1"]);
    world.stop_ferryd();
    check(world.ferryd_command().arg("reset"));
    let filters = check(
        &mut world
            .host
            .cmd("tc", &["filter", "show", "dev", "lo", "ingress"]),
    );
    assert!(!filters.contains("local_ingress"), "{filters}");
    assert_eq!(lo_settings(&world), ["0", "0"]);
}

#[test]
fn udp_to_localhost_reaches_a_published_udp_port() {
    let world = World::new();
    let cmd = [
        "socat".to_owned(),
        "UDP-RECVFROM:53,fork".to_owned(),
        "EXEC:cat".to_owned(),
    ];
    run_published(&world, "dns", "5354:53/udp", &cmd);
    let (ok, got) = udp_echo(|args| world.in_host("sh", args), "local", 5354);
    assert!(ok, "no UDP echo via localhost: {got:?}");
}

/// The answer to a datagram sent to a published UDP port reads as coming
/// from the address and port the socket sent to, for an unconnected socket
/// (`sendto`/`recvfrom`, remembered by destination) and for a connected
/// one (`connect`, remembered on the socket) alike; and a connected TCP
/// socket's `getpeername` names what it connected to. A UDP socket
/// connected again, straight to the container, names the container.
#[test]
fn answers_to_translated_sockets_name_the_published_address() {
    let world = World::new();
    let echo = ["socat", "UDP-RECVFROM:53,fork", "EXEC:cat"].map(String::from);
    run_published(&world, "dns", "5356:53/udp", &echo);
    let direct = world.container("dns").ip;
    let tcp = responder(80, "echo hi");
    run_published(&world, "web", "8086:80", &tcp);
    let script = r#"
import socket, sys
host = sys.argv[1]
out = []
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
u.sendto(b"unconnected", (host, 5356))
data, peer = u.recvfrom(100)
out.append("%s %s:%d" % (data.decode().strip(), peer[0], peer[1]))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(1)
c.connect((host, 5356))
c.send(b"connected")
data, peer = c.recvfrom(100)
out.append("%s %s:%d" % (data.decode().strip(), peer[0], peer[1]))
p = c.getpeername()
out.append("udp peer %s:%d" % p)
c.connect((sys.argv[2], 53))
c.send(b"direct")
data, peer = c.recvfrom(100)
out.append("%s %s:%d" % (data.decode().strip(), peer[0], peer[1]))
out.append("udp peer %s:%d" % c.getpeername())
t = socket.create_connection((host, 8086), timeout=1)
p = t.getpeername()
out.append("tcp peer %s:%d %s" % (p[0], p[1], t.recv(100).decode().strip()))
print("\n".join(out))
"#;
    for addr in ["127.0.0.1", HOST_UPLINK_IP] {
        let (mut got, mut err) = (String::new(), String::new());
        // One try takes up to 3 s while the echo is not yet listening (a
        // lost datagram waits out its timeout): room for several.
        let ok = wait_until(Duration::from_secs(15), || {
            let out = output(&mut world.in_host("python3", &["-c", script, addr, &direct]));
            got = String::from_utf8_lossy(&out.stdout).into_owned();
            err = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(
            ok,
            "no answers via {addr}: {got:?} {err}\n{}\n{}",
            world.ferry_ok(&["datapath"]),
            world.ferryd_log()
        );
        assert_eq!(
            got,
            format!(
                "unconnected {addr}:5356\nconnected {addr}:5356\nudp peer {addr}:5356\n\
                 direct {direct}:53\nudp peer {direct}:53\ntcp peer {addr}:8086 hi\n"
            )
        );
    }
}

#[test]
fn containers_reach_their_own_and_other_published_ports_by_host_address() {
    let world = World::new();
    let a = world.run(
        "a",
        &[
            "socat",
            "TCP-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo from-a $SOCAT_PEERADDR",
        ],
    );
    // `run` has no -p: publish through a second container instead.
    run_published(
        &world,
        "web",
        "8087:80",
        &responder(80, "echo from-web $SOCAT_PEERADDR"),
    );
    let b = world.run("b", &["sleep", "infinity"]);
    let target = tcp(HOST_UPLINK_IP, 8087);
    let mut got = None;
    assert!(wait_until(Duration::from_secs(5), || {
        got = answer(&mut world.exec(&b, "socat", &["-T", "2", "-", &target]));
        got.is_some()
    }));
    // Hairpin through the socket hook: the container sees the other
    // container's own address, not a NAT address.
    assert_eq!(
        got.as_deref(),
        Some(format!("from-web {}\n", b.ip).as_str())
    );
    let web = world.container("web");
    let own = answer(&mut world.exec(&web, "socat", &["-T", "2", "-", &target]));
    assert_eq!(
        own.as_deref(),
        Some(format!("from-web {}\n", web.ip).as_str())
    );
    assert_eq!(a.name, "a");
}

#[test]
fn a_loopback_publish_is_reachable_from_the_host_only() {
    let world = World::new();
    run_published(
        &world,
        "private",
        "127.0.0.1:8086:80",
        &responder(80, "echo private"),
    );
    let c = world.run("other", &["sleep", "infinity"]);
    assert!(wait_until(Duration::from_secs(5), || {
        answer(&mut world.in_host("socat", &["-T", "2", "-", &tcp("127.0.0.1", 8086)])).is_some()
    }));
    assert_eq!(
        answer(&mut world.in_client("socat", &["-T", "2", "-", &tcp(HOST_UPLINK_IP, 8086)])),
        None,
        "reachable from outside"
    );
    assert_eq!(
        answer(&mut world.exec(&c, "socat", &["-T", "2", "-", &tcp(HOST_UPLINK_IP, 8086)])),
        None,
        "reachable from a container"
    );
    assert_eq!(
        answer(&mut world.exec(&c, "socat", &["-T", "2", "-", &tcp("127.0.0.1", 8086)])),
        None,
        "a container's localhost is its own"
    );
}

#[test]
fn sockets_in_other_namespaces_are_left_alone() {
    let world = World::new();
    run_published(&world, "web", "8088:80", &responder(80, "echo web"));
    assert!(wait_until(Duration::from_secs(5), || {
        answer(&mut world.in_host("socat", &["-T", "2", "-", &tcp("127.0.0.1", 8088)])).is_some()
    }));
    // The client namespace is not ferry's: a process there, even inside the
    // hooked cgroup, connects to its own loopback, untranslated.
    let mut cmd = world
        .client
        .cmd("socat", &["-T", "2", "-", &tcp("127.0.0.1", 8088)]);
    join_cgroup(&mut cmd, &world.cgroup);
    assert_eq!(
        answer(&mut cmd),
        None,
        "a foreign namespace's connect was rewritten"
    );
}
