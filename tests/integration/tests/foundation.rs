//! Foundation: containers created by ferryd talk to each other and to the
//! host through the eBPF datapath, with no bridge, no netfilter rule and no
//! IP forwarding; spoofing is dropped and counted; removal leaves nothing;
//! bad input fails clearly and leaves nothing behind.

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command, time::Duration};

use ferry_integration::{
    Background, Container, HOST_UPLINK_IP, World, bin_dir, check, in_netns, output, ping, rulesets,
    tcp_exchange, wait_until,
};

/// A container workload that echoes every TCP connection on `port`.
fn echo_server(port: u16) -> Vec<String> {
    vec![
        "socat".into(),
        format!("TCP-LISTEN:{port},fork,reuseaddr"),
        "EXEC:cat".into(),
    ]
}

fn run_echo(world: &World, name: &str, port: u16) -> Container {
    let cmd = echo_server(port);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    world.run(name, &cmd)
}

fn stats(world: &World, name: &str) -> (u64, u64) {
    let j = world.stats(name);
    let counter = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("no {k} in {j}"));
    (counter("RxPackets"), counter("TxPackets"))
}

#[test]
fn containers_ping_and_exchange_tcp_both_ways() {
    let world = World::new();
    let a = run_echo(&world, "a", 7001);
    let b = run_echo(&world, "b", 7002);
    assert_ne!(a.ip, b.ip);
    let pid = world.ferry_ok(&[
        "inspect",
        "-f",
        "{{.State.Pid}} {{.NetworkSettings.IPAddress}}",
        "b",
    ]);
    assert_eq!(pid.trim(), format!("{} {}", b.pid, b.ip));

    assert!(ping(&a.netns, &b.ip, 3, &[]), "a cannot ping b");
    assert!(ping(&b.netns, &a.ip, 3, &[]), "b cannot ping a");
    assert_eq!(tcp_exchange(&a.netns, &b.ip, 7002, "from a\n"), "from a\n");
    assert_eq!(tcp_exchange(&b.netns, &a.ip, 7001, "from b\n"), "from b\n");

    // Both directions were forwarded and counted by the datapath.
    let (a_rx, a_tx) = stats(&world, "a");
    let (b_rx, b_tx) = stats(&world, "b");
    assert!(a_tx >= 6 && b_tx >= 6, "tx counters: a={a_tx} b={b_tx}");
    assert!(a_rx >= 6 && b_rx >= 6, "rx counters: a={a_rx} b={b_rx}");
}

#[test]
fn host_and_container_reach_each_other() {
    let world = World::new();
    let c = run_echo(&world, "web", 7003);
    let host = world.host_ns_path();

    assert!(ping(&host, &c.ip, 3, &[]), "host cannot ping the container");
    assert_eq!(tcp_exchange(&host, &c.ip, 7003, "hi\n"), "hi\n");

    assert!(
        ping(&c.netns, HOST_UPLINK_IP, 3, &[]),
        "container cannot ping the host"
    );
    let server =
        Background::spawn(world.in_host("socat", &["TCP-LISTEN:7004,reuseaddr", "EXEC:cat"]));
    let echoed = tcp_exchange(&c.netns, HOST_UPLINK_IP, 7004, "to host\n");
    drop(server);
    assert_eq!(echoed, "to host\n");
}

#[test]
fn no_bridge_no_netfilter_rule_no_ip_forwarding() {
    // The namespace this test runs in: the machine's own.
    let root = Path::new("/proc/self/ns/net");
    let root_before = rulesets(root);
    let mut world = World::with_subnet_unstarted(None);
    let host = world.host_ns_path();
    let host_before = rulesets(&host);
    world.start_ferryd();

    let a = run_echo(&world, "a", 7005);
    let b = run_echo(&world, "b", 7006);
    assert!(ping(&a.netns, &b.ip, 2, &[]));
    assert_eq!(tcp_exchange(&a.netns, &b.ip, 7006, "x\n"), "x\n");

    let forwarding = check(&mut world.in_host("sysctl", &["-n", "net.ipv4.ip_forward"]));
    assert_eq!(
        forwarding.trim(),
        "0",
        "the test needs forwarding off to prove anything"
    );
    let bridges = check(&mut world.in_host("ip", &["-d", "-o", "link", "show", "type", "bridge"]));
    assert!(bridges.trim().is_empty(), "a bridge exists: {bridges}");
    assert_eq!(
        rulesets(&host),
        host_before,
        "ferry changed the host namespace's rules"
    );
    assert_eq!(rulesets(root), root_before, "the machine's rules changed");
}

/// Pings `to` from `from` (with extra `ping` flags), which must fail; the
/// `reason` drop counter must grow by at least `count` and `to` must not
/// have received anything.
fn assert_dropped(
    world: &World,
    from: &Container,
    to: &Container,
    extra: &[&str],
    reason: &str,
    count: u64,
) {
    let before = world.drops(reason);
    let (rx_before, _) = stats(world, &to.name);
    assert!(
        !ping(&from.netns, &to.ip, count as u32, extra),
        "{reason}: traffic got through"
    );
    assert!(
        world.drops(reason) >= before + count,
        "{reason} did not count the drops"
    );
    assert_eq!(
        stats(world, &to.name).0,
        rx_before,
        "{reason}: {} received it",
        to.name
    );
}

#[test]
fn forged_source_ip_and_mac_are_dropped_and_counted() {
    let world = World::new();
    let a = world.run("a", &["sleep", "infinity"]);
    let b = world.run("b", &["sleep", "infinity"]);
    assert!(ping(&a.netns, &b.ip, 1, &[]), "baseline");

    let forged = "10.89.0.250";
    check(&mut in_netns(
        &a.netns,
        "ip",
        &["addr", "add", &format!("{forged}/32"), "dev", "eth0"],
    ));
    assert_dropped(&world, &a, &b, &["-I", forged], "spoofed_ip", 3);

    // A forged MAC: changing it flushes the gateway entry, so the first
    // frames are ARP requests; restoring the entry then sends IPv4 frames.
    // Both kinds must be dropped.
    let gateway_mac = world.inspect("a")["Ferry"]["HostVethMac"]
        .as_str()
        .expect("mac")
        .to_owned();
    check(&mut in_netns(
        &a.netns,
        "ip",
        &["link", "set", "eth0", "address", "02:00:00:00:00:99"],
    ));
    assert_dropped(&world, &a, &b, &[], "spoofed_mac", 1);
    check(&mut in_netns(
        &a.netns,
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
    assert_dropped(&world, &a, &b, &[], "spoofed_mac", 3);
}

#[test]
fn the_datapath_answers_arp_for_the_gateway() {
    let world = World::new();
    let a = world.run("a", &["sleep", "infinity"]);
    let b = world.run("b", &["sleep", "infinity"]);
    // Without its permanent entry the container must ARP for 169.254.1.1;
    // no interface owns that address, the datapath answers.
    check(&mut in_netns(
        &a.netns,
        "ip",
        &["neigh", "del", "169.254.1.1", "dev", "eth0"],
    ));
    assert!(
        ping(&a.netns, &b.ip, 2, &[]),
        "no traffic after relearning the gateway"
    );
    let neigh = check(&mut in_netns(
        &a.netns,
        "ip",
        &["neigh", "show", "169.254.1.1"],
    ));
    let gateway_mac = world.inspect("a")["Ferry"]["HostVethMac"]
        .as_str()
        .expect("mac")
        .to_owned();
    assert!(neigh.contains(&gateway_mac), "gateway learnt as {neigh}");
}

fn netns_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("netns")
        .ino()
}

/// True if any process still uses the network namespace with this inode.
fn netns_in_use(ino: u64) -> bool {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("ns/net")).ok())
        .any(|m| m.ino() == ino)
}

fn endpoint_map(world: &World) -> String {
    let pin = world.pin_dir.join("endpoints");
    check(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pin),
    )
}

#[test]
fn removing_a_container_removes_veth_route_map_entry_and_namespace() {
    let world = World::new();
    let c = world.run("gone", &["sleep", "infinity"]);
    let ino = netns_inode(c.pid);
    let state_dir = world.dir.join("state/containers").join(&c.id);
    let octets: Vec<&str> = c.ip.split('.').collect();
    let key = format!("[{}]", octets.join(","));
    assert!(state_dir.is_dir());
    assert!(endpoint_map(&world).replace(' ', "").contains(&key));

    world.ferry_ok(&["rm", "-f", "gone"]);

    let link = output(&mut world.in_host("ip", &["link", "show", &c.host_veth]));
    assert!(!link.status.success(), "veth {} still exists", c.host_veth);
    let route = check(&mut world.in_host("ip", &["route", "show", &format!("{}/32", c.ip)]));
    assert!(route.trim().is_empty(), "route left: {route}");
    assert!(
        !endpoint_map(&world).replace(' ', "").contains(&key),
        "endpoint left in the map"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !netns_in_use(ino)),
        "the container's namespace still has processes"
    );
    assert!(!state_dir.exists(), "state left at {}", state_dir.display());
    assert!(world.ferry_ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn stock_tools_show_the_datapath_by_name() {
    let world = World::new();
    let c = world.run("seen", &["sleep", "infinity"]);
    let tc = check(&mut world.in_host("tc", &["filter", "show", "dev", &c.host_veth, "ingress"]));
    assert!(
        tc.contains("from_container"),
        "tc does not show from_container: {tc}"
    );
    let tc = check(&mut world.in_host("tc", &["filter", "show", "dev", &c.host_veth, "egress"]));
    assert!(
        tc.contains("to_container"),
        "tc does not show to_container: {tc}"
    );
    let net = check(&mut world.in_host("bpftool", &["net", "show"]));
    assert!(
        net.contains(c.host_veth.as_str()) && net.contains("from_container"),
        "{net}"
    );
    let dump = check(
        Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(world.pin_dir.join("endpoints")),
    );
    for field in ["\"ip\"", "\"ifindex\"", "\"mac\"", "\"host_mac\""] {
        assert!(
            dump.contains(field),
            "map dump lacks BTF field {field}: {dump}"
        );
    }
    for pin in [
        "endpoints",
        "ep_stats",
        "drops",
        "progs/from_container",
        "progs/to_container",
    ] {
        assert!(world.pin_dir.join(pin).exists(), "missing pin {pin}");
    }
}

#[test]
fn unknown_container_is_a_clear_error() {
    let world = World::new();
    for verb in [
        &["rm"][..],
        &["stop"],
        &["inspect"],
        &["stats", "--no-stream"],
        &["logs"],
        &["kill"],
        &["wait"],
    ] {
        let mut args = verb.to_vec();
        args.push("nope");
        let out = world.ferry(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no such container: nope"), "{args:?}: {err}");
    }
}

/// Interfaces in the host namespace, by name.
fn host_links(world: &World) -> Vec<String> {
    check(&mut world.in_host("ip", &["-o", "link", "show"]))
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .collect()
}

fn state_entries(world: &World) -> usize {
    std::fs::read_dir(world.dir.join("state/containers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn failed_runs_leave_nothing_behind() {
    let mut world = World::with_subnet_unstarted(Some("10.89.7.0/30"));
    world.start_ferryd();
    let links = host_links(&world);

    // Command not found: the error names it; no veth, state or map entry.
    let out = world.ferry(&["run", "-d", "--", "/no/such/binary"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/binary") && err.contains("not found"),
        "{err}"
    );
    assert_eq!(host_links(&world), links);
    assert_eq!(state_entries(&world), 0);
    assert_eq!(endpoint_map(&world).trim(), "[]");

    // A /30 holds one container: the second run fails, the first is intact.
    let first = world.run("only", &["sleep", "infinity"]);
    let links = host_links(&world);
    let out = world.ferry(&["run", "-d", "--", "sleep", "infinity"]);
    assert!(
        !out.status.success(),
        "second container in a /30 was created"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no free address left in 10.89.7.0/30"),
        "{err}"
    );
    assert_eq!(host_links(&world), links);
    assert_eq!(state_entries(&world), 1);
    assert!(ping(&world.host_ns_path(), &first.ip, 1, &[]));

    // A taken name is refused before anything is made.
    let out = world.ferry(&["run", "-d", "--name", "only", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    assert_eq!(host_links(&world), links);
}

fn ferryd_fails(cmd: &mut Command, expect: &str) {
    let out = output(cmd);
    assert!(!out.status.success(), "ferryd started: {cmd:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not a one-line error: {err}");
}

#[test]
fn ferryd_refuses_bad_configuration_clearly() {
    let mut world = World::new();

    // The socket is served by the running ferryd.
    let other_run = world.dir.join("run2");
    let mut second = world.ferryd_command_with(&[("--run-dir", other_run.to_str().expect("utf8"))]);
    ferryd_fails(&mut second, "already in use");
    assert!(
        !other_run.exists(),
        "a refused ferryd created {}",
        other_run.display()
    );
    world.ferry_ok(&["ps"]);
    world.stop_ferryd();

    let mut bad_subnet = world.ferryd_command_with(&[("--subnet", "10.0.0.0/33")]);
    ferryd_fails(&mut bad_subnet, "invalid subnet \"10.0.0.0/33\"");

    let not_bpffs = world.dir.join("not-bpffs");
    let mut bad_pins =
        world.ferryd_command_with(&[("--pin-dir", not_bpffs.to_str().expect("utf8"))]);
    ferryd_fails(&mut bad_pins, "not on a bpf filesystem");
    assert!(!not_bpffs.exists());
}

#[test]
fn ferryd_refuses_to_start_without_root_or_bpf() {
    let world = World::with_subnet_unstarted(None);
    let state = world.dir.join("state");

    let mut unprivileged = world.ferryd_command();
    // SAFETY: setuid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut unprivileged, || {
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(std::io::Error::from)
        });
    }
    ferryd_fails(&mut unprivileged, "must run as root");

    // Root inside a fresh user namespace: uid 0, but no capability over the
    // machine's BPF.
    let ferryd = bin_dir().join("ferryd");
    let mut no_bpf = Command::new("unshare");
    no_bpf
        .args(["--user", "--map-root-user"])
        .arg(ferryd)
        .args(world.ferryd_args());
    ferryd_fails(&mut no_bpf, "no BPF support");
    assert!(
        !state.exists(),
        "a refused ferryd created {}",
        state.display()
    );
}

#[test]
fn the_datapath_outlives_ferryd_and_a_new_ferryd_adopts_it() {
    let mut world = World::new();
    let a = run_echo(&world, "a", 7007);
    let b = run_echo(&world, "b", 7008);
    assert!(ping(&a.netns, &b.ip, 1, &[]));

    // ferryd gone: containers keep running and traffic keeps flowing through
    // the filters and pinned maps it left.
    world.stop_ferryd();
    assert!(
        ping(&a.netns, &b.ip, 3, &[]),
        "no traffic while ferryd is down"
    );
    assert_eq!(tcp_exchange(&a.netns, &b.ip, 7008, "alone\n"), "alone\n");

    // A new ferryd adopts them: same containers, counters kept (the
    // packets sent while it was down are in them), one filter per hook.
    world.start_ferryd();
    assert_eq!(world.container("b").pid, b.pid);
    let (rx, _) = stats(&world, "b");
    assert!(rx >= 4, "counters were reset: b rx={rx}");
    let tc = check(&mut world.in_host("tc", &["filter", "show", "dev", &b.host_veth, "ingress"]));
    let filters = tc.lines().filter(|l| l.contains("from_container")).count();
    assert_eq!(filters, 1, "filters duplicated: {tc}");
    // The pinned links were switched to the new programs, not doubled.
    let net = check(&mut world.in_host("bpftool", &["net", "show"]));
    let xdp = net
        .lines()
        .filter(|l| l.starts_with("uplink0") && l.contains("driver"))
        .count();
    assert_eq!(xdp, 1, "XDP attachments on the uplink: {net}");
    let hooks = check(
        Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&world.cgroup),
    );
    let hooks = hooks.lines().filter(|l| l.contains("sock_")).count();
    assert_eq!(hooks, 4, "socket hooks on the world cgroup after restart");
    assert_eq!(tcp_exchange(&b.netns, &a.ip, 7007, "again\n"), "again\n");
    world.ferry_ok(&["rm", "-f", "a"]);
    let link = output(&mut world.in_host("ip", &["link", "show", &a.host_veth]));
    assert!(
        !link.status.success(),
        "an adopted container's veth survived rm"
    );
}
