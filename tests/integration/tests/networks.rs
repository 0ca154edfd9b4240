//! User-defined networks: created, listed, inspected and removed with clear
//! errors; traffic inside a network, none across (dropped and counted);
//! internal networks without egress or published ports; icc=false.

use std::{process::Stdio, time::Duration};

use ferry_integration::{Background, CLIENT_IP, Container, World, output, ping, wait_until};
use serde_json::Value;

fn fails(world: &World, args: &[&str], says: &str) {
    let out = world.ferry(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(says), "{args:?}: {says:?} missing from: {err}");
}

fn network(world: &World, name: &str) -> Value {
    let out = world.ferry_ok(&["network", "inspect", name]);
    let mut all: Vec<Value> = serde_json::from_str(&out).expect("network JSON");
    all.pop().expect("one network")
}

fn on(world: &World, name: &str, net: &str, extra: &[&str]) -> Container {
    let mut flags = vec!["--network", net];
    flags.extend_from_slice(extra);
    world.run_with(name, &flags, &["sleep", "infinity"])
}

/// Whether `from` gets an answer to one ping to `to`.
fn reaches(from: &Container, to: &str) -> bool {
    ping(&from.netns, to, 1, &["-W", "1"])
}

#[test]
fn networks_are_managed_with_clear_errors_that_leave_nothing() {
    let world = World::new();
    world.ferry_ok(&["network", "create", "--subnet", "10.91.5.0/24", "front"]);
    world.ferry_ok(&["network", "create", "back"]);
    let names = world.ferry_ok(&["network", "ls", "-q"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["back", "bridge", "front"]
    );
    let front = network(&world, "front");
    assert_eq!(front["IPAM"]["Config"][0]["Subnet"], "10.91.5.0/24");
    assert_eq!(front["Driver"], "ferry");
    assert_eq!(
        network(&world, "back")["IPAM"]["Config"][0]["Subnet"],
        "10.90.0.0/24"
    );

    let before = world.footprint();
    for (args, says) in [
        (vec!["network", "create", "front"], "already exists"),
        (vec!["network", "create", "host"], "predefined"),
        (
            vec!["network", "create", "--subnet", "10.91.5.128/25", "x"],
            "overlaps 10.91.5.0/24 of network front",
        ),
        (
            vec!["network", "create", "--subnet", "10.200.0.0/24", "x"],
            "holds the host address 10.200.0.1",
        ),
        (
            vec!["network", "create", "--subnet", "10.91.6.0/33", "x"],
            "invalid subnet",
        ),
        (
            vec!["network", "create", "-o", "mtu=9000", "x"],
            "unsupported network option",
        ),
        (vec!["network", "rm", "nope"], "network nope not found"),
        (vec!["network", "rm", "bridge"], "predefined"),
        (
            vec!["run", "-d", "--network", "nope", "--", "true"],
            "network nope not found",
        ),
        (
            vec![
                "run",
                "-d",
                "--network",
                "front",
                "--ip",
                "10.91.6.9",
                "--",
                "true",
            ],
            "outside 10.91.5.0/24",
        ),
        (
            vec!["run", "-d", "--ip", "10.89.0.9", "--", "true"],
            "user-defined networks only",
        ),
    ] {
        fails(&world, &args, says);
    }
    assert_eq!(world.footprint(), before, "failures left something behind");

    let web = on(
        &world,
        "web",
        "front",
        &["--ip", "10.91.5.77", "--network-alias", "www"],
    );
    assert_eq!(web.ip, "10.91.5.77");
    fails(
        &world,
        &[
            "run",
            "-d",
            "--network",
            "front",
            "--ip",
            "10.91.5.77",
            "--",
            "true",
        ],
        "10.91.5.77 is already in use",
    );
    let ep = &world.inspect("web")["NetworkSettings"]["Networks"]["front"];
    assert_eq!(ep["NetworkID"], front["Id"]);
    assert_eq!(ep["Aliases"][0], "www");
    let members = &network(&world, "front")["Containers"];
    assert_eq!(members[web.id.as_str()]["Name"], "web");
    fails(
        &world,
        &["network", "rm", "front"],
        "in use by container(s) web",
    );
    world.ferry_ok(&["rm", "-f", "web"]);
    world.ferry_ok(&["network", "rm", "front", "back"]);
    assert_eq!(world.ferry_ok(&["network", "ls", "-q"]).trim(), "bridge");
}

#[test]
fn containers_talk_within_a_network_and_not_across() {
    let world = World::new();
    world.ferry_ok(&["network", "create", "blue"]);
    world.ferry_ok(&["network", "create", "green"]);
    let b1 = on(&world, "b1", "blue", &[]);
    let b2 = on(&world, "b2", "blue", &[]);
    let g1 = on(&world, "g1", "green", &[]);
    let g2 = on(&world, "g2", "green", &[]);
    let d = world.run("d", &["sleep", "infinity"]);
    assert!(
        reaches(&b1, &b2.ip) && reaches(&g2, &g1.ip),
        "no traffic inside a network"
    );
    let denied = world.drops("policy_denied");
    for (from, to) in [(&b1, &g1), (&g2, &b2), (&d, &b1), (&b2, &d)] {
        assert!(
            !reaches(from, &to.ip),
            "{} reached {} across networks",
            from.name,
            to.name
        );
    }
    assert!(
        world.drops("policy_denied") >= denied + 4,
        "cross-network drops not counted"
    );
    // Every network still reaches the outside (masquerade) and the host.
    assert!(reaches(&b1, CLIENT_IP) && reaches(&g1, CLIENT_IP));
}

#[test]
fn an_internal_network_reaches_only_itself() {
    let world = World::new();
    world.ferry_ok(&["network", "create", "--internal", "vault"]);
    let a = on(&world, "a", "vault", &[]);
    let b = on(&world, "b", "vault", &[]);
    assert!(reaches(&a, &b.ip));
    let denied = world.drops("policy_denied");
    assert!(
        !reaches(&a, CLIENT_IP),
        "an internal network reached the outside"
    );
    assert!(
        !reaches(&a, ferry_integration::HOST_UPLINK_IP),
        "an internal network reached the host"
    );
    assert!(world.drops("policy_denied") >= denied + 2);
    fails(
        &world,
        &[
            "run",
            "-d",
            "--network",
            "vault",
            "-p",
            "8300:80",
            "--",
            "true",
        ],
        "port publishing and the internal network vault",
    );
}

#[test]
fn icc_false_blocks_traffic_between_a_networks_containers() {
    let world = World::new();
    world.ferry_ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "solo",
    ]);
    assert_eq!(
        network(&world, "solo")["Options"]["com.docker.network.bridge.enable_icc"],
        "false"
    );
    let a = on(&world, "a", "solo", &[]);
    let b = on(&world, "b", "solo", &[]);
    let denied = world.drops("policy_denied");
    assert!(!reaches(&a, &b.ip), "icc=false did not block");
    assert!(world.drops("policy_denied") > denied);
    // Still a normal network towards the outside.
    let _server = Background::spawn(
        world.in_client("socat", &["TCP-LISTEN:9100,reuseaddr", "SYSTEM:echo out"]),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        let out = output(
            world
                .exec(
                    &a,
                    "socat",
                    &["-T", "2", "-", &format!("TCP:{CLIENT_IP}:9100")],
                )
                .stdin(Stdio::null()),
        );
        String::from_utf8_lossy(&out.stdout).contains("out")
    }));
}

#[test]
fn networks_and_their_policy_survive_a_restart() {
    let mut world = World::new();
    world.ferry_ok(&["network", "create", "--internal", "keep"]);
    world.ferry_ok(&["network", "create", "side"]);
    let a = on(&world, "a", "keep", &[]);
    let b = on(&world, "b", "keep", &[]);
    let x = on(&world, "x", "side", &[]);
    world.ferry_ok(&["network", "connect", "side", "a"]);
    world.kill_ferryd();
    world.start_ferryd();
    assert_eq!(world.ferry_ok(&["network", "ls", "-q"]).lines().count(), 3);
    assert!(reaches(&a, &b.ip));
    assert!(!reaches(&a, CLIENT_IP), "the internal policy was lost");
    // The connected interface was adopted too, names included.
    assert!(reaches(&a, &x.ip));
    assert!(resolve(&world, &x, "a").is_some());
    world.ferry_ok(&["network", "disconnect", "side", "a"]);
    assert!(!reaches(&a, &x.ip));
    // The address stays taken across the restart.
    fails(
        &world,
        &[
            "run",
            "-d",
            "--network",
            "keep",
            "--ip",
            &a.ip,
            "--",
            "true",
        ],
        "already in use",
    );
}

/// A resolver for the outside network: example.com is 192.0.2.44, every
/// other name NXDOMAIN.
const FAKE_RESOLVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
        i += 1 + q[i]
    question = q[12:i + 5]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    if ".".join(labels) == "example.com":
        answers = b"" if qtype != 1 else b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.44")
        head = struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8180, 1, 1 if answers else 0, 0, 0)
    else:
        answers = b""
        head = struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8183, 1, 0, 0, 0)
    s.sendto(head + question + answers, peer)
"#;

/// `ferry exec`: the command in all of the container's namespaces (its
/// own /etc files included; `World::exec` joins only the network).
fn ferry_exec(world: &World, c: &Container, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["exec", c.name.as_str()];
    args.extend_from_slice(cmd);
    world.ferry(&args)
}

/// The address `name` resolves to inside container `c` (its resolver,
/// through glibc), or `None`.
fn resolve(world: &World, c: &Container, name: &str) -> Option<String> {
    resolve_with(world, c, name, &[])
}

/// Like [`resolve`], with extra `ferry exec` flags (e.g. an environment).
fn resolve_with(world: &World, c: &Container, name: &str, flags: &[&str]) -> Option<String> {
    let script = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))";
    let mut cmd = flags.to_vec();
    cmd.extend([c.name.as_str(), "python3", "-c", script, name]);
    let mut args = vec!["exec"];
    args.extend(cmd);
    let out = world.ferry(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn the_embedded_dns_answers_the_networks_names_and_forwards_the_rest() {
    let upstream = format!("{CLIENT_IP}:53");
    let world = World::with_ferryd_args(&["--dns-upstream", &upstream]);
    let _resolver =
        Background::spawn(world.in_client("python3", &["-c", FAKE_RESOLVER, CLIENT_IP]));
    for net in [&["blue"][..], &["green"], &["--internal", "vault"]] {
        let mut args = vec!["network", "create"];
        args.extend_from_slice(net);
        world.ferry_ok(&args);
    }
    let web = on(&world, "web", "blue", &["--network-alias", "www"]);
    let client = on(
        &world,
        "client",
        "blue",
        &["--add-host", "printer:10.1.2.3"],
    );
    let other = on(&world, "other", "green", &[]);
    let safe = on(&world, "safe", "vault", &[]);

    let conf =
        String::from_utf8_lossy(&ferry_exec(&world, &client, &["cat", "/etc/resolv.conf"]).stdout)
            .into_owned();
    assert!(
        conf.contains("nameserver 127.0.0.11"),
        "resolv.conf: {conf}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || resolve(&world, &client, "web")
            .as_deref()
            == Some(web.ip.as_str())),
        "web did not resolve"
    );
    assert_eq!(
        resolve(&world, &client, "WWW").as_deref(),
        Some(web.ip.as_str())
    );
    assert_eq!(
        resolve(&world, &client, &web.id[..12]).as_deref(),
        Some(web.ip.as_str())
    );
    assert_eq!(
        resolve(&world, &client, "printer").as_deref(),
        Some("10.1.2.3")
    );
    assert_eq!(
        resolve(&world, &client, "example.com").as_deref(),
        Some("192.0.2.44")
    );
    // Another network's containers are not names here (the upstream says
    // NXDOMAIN), and the reverse.
    assert_eq!(resolve(&world, &client, "other"), None);
    assert_eq!(resolve(&world, &other, "web"), None);
    // An internal network resolves its own names only.
    assert_eq!(
        resolve(&world, &safe, "safe").as_deref(),
        Some(safe.ip.as_str())
    );
    assert_eq!(resolve(&world, &safe, "example.com"), None);
    // Over TCP too (glibc's use-vc): the network's names, and forwarded
    // ones (asked upstream over UDP, answered over TCP).
    let tcp = ["-e", "RES_OPTIONS=use-vc"];
    assert_eq!(
        resolve_with(&world, &client, "www", &tcp).as_deref(),
        Some(web.ip.as_str())
    );
    assert_eq!(
        resolve_with(&world, &client, "example.com", &tcp).as_deref(),
        Some("192.0.2.44")
    );
    // A removed container's name goes with it.
    world.ferry_ok(&["rm", "-f", "web"]);
    assert_eq!(resolve(&world, &client, "web"), None);
}

#[test]
fn dns_flags_shape_the_containers_resolver_files() {
    let world = World::new();
    let c = world.run_with(
        "plain",
        &["--dns", CLIENT_IP, "--add-host", "db.local:10.9.8.7"],
        &["sleep", "infinity"],
    );
    let cat =
        |f: &str| String::from_utf8_lossy(&ferry_exec(&world, &c, &["cat", f]).stdout).into_owned();
    assert_eq!(cat("/etc/resolv.conf"), format!("nameserver {CLIENT_IP}\n"));
    assert!(cat("/etc/hosts").contains("10.9.8.7\tdb.local\n"));
    fails(
        &world,
        &["run", "-d", "--dns", "resolver", "--", "true"],
        "invalid --dns",
    );
    fails(
        &world,
        &["run", "-d", "--add-host", "nocolon", "--", "true"],
        "invalid --add-host",
    );
}

#[test]
fn connect_and_disconnect_change_reachability_and_names_at_once() {
    let world = World::new();
    world.ferry_ok(&["network", "create", "--subnet", "10.91.1.0/24", "front"]);
    world.ferry_ok(&["network", "create", "--subnet", "10.91.2.0/24", "back"]);
    let web = on(&world, "web", "front", &[]);
    let db = on(&world, "db", "back", &["--network-alias", "database"]);
    assert!(
        !reaches(&web, &db.ip),
        "networks not isolated before connect"
    );
    let before = world.footprint();

    world.ferry_ok(&[
        "network",
        "connect",
        "--ip",
        "10.91.2.50",
        "--alias",
        "app",
        "back",
        "web",
    ]);
    let eps = &world.inspect("web")["NetworkSettings"]["Networks"];
    assert_eq!(eps["back"]["IPAddress"], "10.91.2.50");
    assert_eq!(eps["front"]["IPAddress"], web.ip.as_str());
    let eth1 = ferry_exec(&world, &web, &["ip", "-o", "-4", "addr", "show", "eth1"]);
    assert!(String::from_utf8_lossy(&eth1.stdout).contains("10.91.2.50/32"));
    assert!(reaches(&web, &db.ip), "connect did not open the way");
    assert_eq!(resolve(&world, &db, "app").as_deref(), Some("10.91.2.50"));
    assert_eq!(
        resolve(&world, &web, "database").as_deref(),
        Some(db.ip.as_str())
    );
    assert!(network(&world, "back")["Containers"][web.id.as_str()].is_object());
    fails(
        &world,
        &["network", "connect", "back", "web"],
        "already connected",
    );
    fails(
        &world,
        &["network", "disconnect", "front", "web"],
        "first network (eth0)",
    );

    world.ferry_ok(&["network", "disconnect", "back", "web"]);
    assert!(!reaches(&web, &db.ip), "disconnect left the way open");
    assert_eq!(resolve(&world, &db, "app"), None);
    fails(
        &world,
        &["network", "disconnect", "back", "web"],
        "not connected",
    );
    assert_eq!(
        world.footprint(),
        before,
        "disconnect left something behind"
    );

    // Removing a connected container removes both interfaces.
    world.ferry_ok(&["network", "connect", "back", "web"]);
    world.ferry_ok(&["rm", "-f", "web", "db"]);
    world.ferry_ok(&["network", "rm", "front", "back"]);
}
