//! Looking inside a running datapath with ferry's own commands: what is
//! attached where, how full the maps are, per-container counters, and the
//! tracked flows, each checked against traffic the test sent.

use std::time::Duration;

use ferry_integration::{CLIENT_IP, Container, HOST_UPLINK_IP, World, check, ping, wait_until};
use serde_json::Value;

fn datapath(world: &World) -> Value {
    world.datapath()
}

fn has_attachment(d: &Value, target: &str, program: &str, hook: &str) -> bool {
    d["Attachments"].as_array().is_some_and(|all| {
        all.iter()
            .any(|a| a["Target"] == target && a["Program"] == program && a["Hook"] == hook)
    })
}

fn map<'a>(d: &'a Value, name: &str) -> &'a Value {
    ferry_integration::map_of(d, name)
}

#[test]
fn datapath_shows_attachments_by_interface_map_fill_and_xdp_mode() {
    let world = World::new();
    let c = world.run("seen", &["sleep", "infinity"]);
    let d = datapath(&world);
    assert!(
        has_attachment(&d, &c.host_veth, "from_container", "tc ingress"),
        "{d}"
    );
    assert!(
        has_attachment(&d, &c.host_veth, "to_container", "tc egress"),
        "{d}"
    );
    assert!(
        has_attachment(&d, "uplink0", "uplink_ingress", "tc ingress"),
        "{d}"
    );
    assert!(has_attachment(&d, "uplink0", "xdp_prefilter", "xdp"), "{d}");
    let cgroup = world.cgroup.display().to_string();
    for hook in [
        "sock_connect4",
        "sock_sendmsg4",
        "sock_recvmsg4",
        "sock_peername4",
    ] {
        assert!(has_attachment(&d, &cgroup, hook, "cgroup"), "{hook}: {d}");
    }
    let xdp = d["Attachments"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["Hook"] == "xdp"))
        .expect("xdp attachment");
    // veth has native XDP; the kernel's answer is shown either way.
    assert!(
        xdp["Mode"] == "native" || xdp["Mode"] == "generic",
        "XDP mode as the kernel reports it: {xdp}"
    );

    let endpoints = map(&d, "endpoints");
    assert_eq!(endpoints["Entries"], 1, "{endpoints}");
    assert!(endpoints["Capacity"].as_u64().is_some_and(|c| c >= 1));
    // A single ping is a flow not yet assured: in ct_new.
    let ct_before = map(&d, "ct_new")["Entries"].as_u64().expect("ct entries");
    assert!(ping(&c.netns, CLIENT_IP, 1, &[]));
    let ct_after = map(&datapath(&world), "ct_new")["Entries"]
        .as_u64()
        .expect("ct entries");
    assert_eq!(
        ct_after,
        ct_before + 2,
        "one masqueraded ping is one flow: two entries"
    );

    let text = world.ferry_ok(&["datapath"]);
    for expected in [
        "xdp (",
        "tc egress",
        "endpoints",
        "drops by reason",
        "outside_spoofed",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    world.ferry_ok(&["rm", "-f", "seen"]);
    let d = datapath(&world);
    assert!(!has_attachment(
        &d,
        &c.host_veth,
        "from_container",
        "tc ingress"
    ));
    assert_eq!(map(&d, "endpoints")["Entries"], 0);
}

fn counters(world: &World, c: &Container) -> (u64, u64) {
    let j = world.inspect(&c.name);
    let n = |k: &str| {
        j["Ferry"]["Counters"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {j}"))
    };
    (n("RxPackets"), n("TxPackets"))
}

#[test]
fn inspect_shows_programs_and_counters_that_move_by_the_packets_sent() {
    let world = World::new();
    let c = world.run("counted", &["sleep", "infinity"]);
    let j = world.inspect("counted");
    let programs: Vec<&str> = j["Ferry"]["Programs"]
        .as_array()
        .expect("Programs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        programs,
        ["from_container (tc ingress)", "to_container (tc egress)"]
    );
    let (rx0, tx0) = counters(&world, &c);
    // Five echo requests in, five replies out; the neighbours are
    // permanent on both sides, so nothing else crosses the veth.
    assert!(ping(&world.host_ns_path(), &c.ip, 5, &[]));
    let (rx1, tx1) = counters(&world, &c);
    assert_eq!((rx1 - rx0, tx1 - tx0), (5, 5));
    let stats = world.stats("counted");
    assert_eq!(stats["RxPackets"], rx1, "{stats}");
}

#[test]
fn conntrack_lists_a_containers_flows_with_their_translation() {
    let world = World::new();
    let a = world.run("a", &["sleep", "infinity"]);
    let b = world.run("b", &["sleep", "infinity"]);
    assert!(ping(&a.netns, CLIENT_IP, 1, &[]));
    assert!(ping(&b.netns, CLIENT_IP, 1, &[]));
    let list = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["conntrack", "list", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&world.ferry_ok(&all)).expect("conntrack JSON")
    };
    let of_a = list(&["--container", "a"]);
    assert_eq!(of_a.len(), 1, "{of_a:?}");
    let flow = &of_a[0];
    assert_eq!(flow["Proto"], "icmp");
    assert_eq!(flow["Nat"], "snat");
    assert!(
        flow["Src"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{}:", a.ip)))
    );
    assert!(
        flow["Dst"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{CLIENT_IP}:")))
    );
    assert!(
        flow["Translated"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{HOST_UPLINK_IP}:"))),
        "{flow}"
    );
    assert!(
        flow["ExpiresInSeconds"]
            .as_u64()
            .is_some_and(|s| s > 0 && s <= 30)
    );
    assert_eq!(list(&["--proto", "icmp"]).len(), 2);
    assert!(list(&["--proto", "tcp"]).is_empty());
    let bad = world.ferry(&["conntrack", "list", "--proto", "sctp"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown protocol"));
}

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Samples of a Prometheus text page, checked line by line against the
/// format: `# HELP`/`# TYPE` before each family, `name{k="v",...} value`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let name = words.next().expect("TYPE name");
            assert!(valid_name(name), "bad name in {line:?}");
            let kind = words.next().expect("TYPE kind");
            assert!(["counter", "gauge"].contains(&kind), "{line:?}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let labels = body
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "bad name in {line:?}");
        assert!(typed.contains(name), "sample before its # TYPE: {line:?}");
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

fn value_of(samples: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .find(|(n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
        })
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no {name} with {label:?}"))
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_the_counters() {
    // A bare port serves on loopback (of the world's own host namespace).
    let world = World::with_ferryd_args(&["--metrics", "9323"]);
    let c = world.run("measured", &["sleep", "infinity"]);
    assert!(ping(&world.host_ns_path(), &c.ip, 3, &[]));
    let (rx, tx) = counters(&world, &c);
    let out = world
        .in_host(
            "curl",
            &["-sS", "--max-time", "5", "http://127.0.0.1:9323/metrics"],
        )
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let samples = parse_prometheus(&text);
    let by_container = ("container", "measured");
    assert_eq!(
        value_of(&samples, "ferry_container_rx_packets_total", by_container),
        rx as f64
    );
    assert_eq!(
        value_of(&samples, "ferry_container_tx_packets_total", by_container),
        tx as f64
    );
    assert!(value_of(&samples, "ferry_container_pids", by_container) >= 1.0);
    let d = datapath(&world);
    for reason in ["outside_spoofed", "spoofed_ip", "malformed"] {
        assert_eq!(
            value_of(&samples, "ferry_drops_total", ("reason", reason)),
            d["Drops"][reason].as_f64().expect("drop count"),
            "{reason}"
        );
    }
    assert!(value_of(&samples, "ferry_map_capacity", ("map", "ct")) > 0.0);
    assert!(value_of(&samples, "ferry_map_capacity", ("map", "ct_new")) > 0.0);
    let ct = &d["Conntrack"];
    for (class, key) in [
        ("unassured", "EvictedUnassured"),
        ("assured", "EvictedAssured"),
    ] {
        assert_eq!(
            value_of(
                &samples,
                "ferry_conntrack_evictions_total",
                ("class", class)
            ),
            ct[key].as_f64().expect("evictions"),
            "{class}"
        );
    }
    assert_eq!(
        value_of(&samples, "ferry_conntrack_entries", ("table", "ct")),
        ct["Assured"].as_f64().expect("assured entries")
    );
    assert_eq!(
        value_of(&samples, "ferry_map_entries", ("map", "endpoints")),
        1.0
    );
    assert!(
        value_of(
            &samples,
            "ferry_api_requests_total",
            ("route", "/containers/{id}/json")
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        value_of(&samples, "ferry_containers", ("status", "running")),
        1.0
    );
}

#[test]
fn datapath_debug_logging_switches_on_and_off_at_run_time() {
    let world = World::new();
    let c = world.run("logged", &["sleep", "infinity"]);
    // The client routes the container subnet to the host: the prefilter
    // drops its pings to the container (outside_to_container).
    world
        .client
        .ip(&["route", "add", "10.89.0.0/24", "via", HOST_UPLINK_IP]);
    let drop_lines = |w: &World| {
        w.ferryd_log()
            .lines()
            .filter(|l| l.contains("drop reason=outside_to_container"))
            .count()
    };
    assert!(!ping(&world.client_ns_path(), &c.ip, 1, &[]));
    assert_eq!(drop_lines(&world), 0, "logging is off by default");

    assert!(world.ferry_ok(&["debug", "datapath", "on"]).contains("on"));
    assert!(world.ferry_ok(&["datapath"]).contains("debug log:    on"));
    assert!(!ping(&world.client_ns_path(), &c.ip, 2, &[]));
    assert!(
        wait_until(Duration::from_secs(5), || drop_lines(&world) >= 2),
        "no datapath log lines:\n{}",
        world.ferryd_log()
    );
    // A new masqueraded flow is logged with its translation.
    assert!(ping(&c.netns, CLIENT_IP, 1, &[]));
    assert!(
        wait_until(Duration::from_secs(5), || world
            .ferryd_log()
            .contains(&format!("new snat flow from {}:", c.ip))),
        "{}",
        world.ferryd_log()
    );

    world.ferry_ok(&["debug", "datapath", "off"]);
    let before = drop_lines(&world);
    assert!(!ping(&world.client_ns_path(), &c.ip, 2, &[]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        drop_lines(&world),
        before,
        "lines after logging was switched off"
    );
    assert!(world.ferry_ok(&["datapath"]).contains("debug log:    off"));
}

/// UDP datagrams from `count` sockets bound to distinct ports (so `count`
/// flows: an ephemeral port could repeat a flow) to the client's discard
/// port, from inside the container.
const UDP_FLOWS: &str = "
import socket, sys
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('', 40000 + i))
    s.sendto(b'x', (sys.argv[2], 9))
    s.close()
";

#[test]
fn a_full_conntrack_map_evicts_and_counts_it() {
    // Unanswered flows stay in ct_new, the table that evicts.
    let world = World::with_ferryd_args(&["--ct-new-max", "64"]);
    let c = world.run("busy", &["sleep", "infinity"]);
    check(&mut world.exec(&c, "python3", &["-c", UDP_FLOWS, "150", CLIENT_IP]));
    let d = datapath(&world);
    let ct = &d["Conntrack"];
    let n = |k: &str| ct[k].as_u64().unwrap_or_else(|| panic!("{k}: {d}"));
    assert_eq!(map(&d, "ct_new")["Capacity"], 64);
    assert!(n("Entries") <= 64, "{ct}");
    assert_eq!(n("Assured"), 0, "{ct}");
    assert_eq!(n("Created"), 300, "two entries per flow: {ct}");
    assert!(n("EvictedUnassured") >= n("Created") - 64, "{ct}");
    assert_eq!(n("Evicted"), n("EvictedUnassured"), "{ct}");
    assert_eq!(n("EvictedAssured"), 0, "{ct}");
    // A flush removes the rest; it is not an eviction.
    let evicted = n("Evicted");
    let live = n("Entries");
    world.ferry_ok(&["conntrack", "flush"]);
    let d = datapath(&world);
    assert_eq!(d["Conntrack"]["Entries"], 0);
    assert_eq!(d["Conntrack"]["Evicted"], evicted);
    assert_eq!(d["Conntrack"]["Removed"], live);
    assert!(
        world
            .ferry_ok(&["datapath"])
            .contains(&format!("evicted:    {evicted} unassured, 0 assured"))
    );
}

/// Three datagrams from one socket, each answered, to `host`:`port`.
const UDP_THREE: &str = "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for i in range(3):
    s.sendto(b'ping%d' % i, (sys.argv[1], int(sys.argv[2])))
    s.recv(100)
";

#[test]
fn published_ports_count_their_traffic_both_ways() {
    let world = World::new();
    world.run_with(
        "echo",
        &["-p", "5353:53/udp"],
        &["socat", "UDP-RECVFROM:53,fork", "EXEC:cat"],
    );
    let probe = format!("echo up | socat -T 1 - UDP:{HOST_UPLINK_IP}:5353");
    let echoed = ferry_integration::wait_for_echo(Duration::from_secs(5), 3, || {
        world.in_client("sh", &["-c", &probe])
    });
    assert_eq!(echoed, "up\n");
    let port = |w: &World| w.inspect("echo")["Ferry"]["PortCounters"]["0.0.0.0:5353/udp"].clone();
    let before = port(&world);
    check(&mut world.in_client("python3", &["-c", UDP_THREE, HOST_UPLINK_IP, "5353"]));
    let after = port(&world);
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    assert_eq!(
        (delta("RxPackets"), delta("TxPackets")),
        (3, 3),
        "{before} -> {after}"
    );
    // Ethernet, IPv4 and UDP headers around 5 bytes of payload, each way.
    assert_eq!(delta("RxBytes"), 3 * (14 + 20 + 8 + 5));
    assert_eq!(delta("TxBytes"), 3 * (14 + 20 + 8 + 5));
}

#[test]
fn bpftool_finds_every_documented_pin_by_its_name() {
    let world = World::new();
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/datapath.md"),
    )
    .expect("docs/datapath.md");
    let pins = docs
        .split("## Pins")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Pins section");
    let maps: Vec<&str> = pins
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|name| !name.contains('/'))
        .collect();
    assert!(maps.len() >= 10, "documented maps: {maps:?}");
    let show = |kind: &str, pin: std::path::PathBuf| -> Value {
        let out = std::process::Command::new("bpftool")
            .args(["-j", kind, "show", "pinned"])
            .arg(&pin)
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool {kind} show pinned {}",
            pin.display()
        );
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    for name in &maps {
        assert!(
            name.len() <= 15,
            "{name} is longer than a kernel object name"
        );
        let info = show("map", world.pin_dir.join(name));
        assert_eq!(info["name"], *name, "{info}");
    }
    let d = datapath(&world);
    for program in d["Programs"].as_array().expect("Programs") {
        let name = program.as_str().expect("program name");
        assert!(
            name.len() <= 15,
            "{name} is longer than a kernel object name"
        );
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not documented"
        );
        let info = show("prog", world.pin_dir.join("progs").join(name));
        assert_eq!(info["name"], name, "{info}");
    }
}

#[test]
fn a_restart_removes_pins_of_programs_that_no_longer_exist() {
    let mut world = World::new();
    world.stop_ferryd();
    // What an older ferry with a since-renamed program would have left.
    let old_prog = world.pin_dir.join("progs/sock_getpeername4");
    let old_link = world.pin_dir.join("links/sock_getpeername4");
    for (kind, from, to) in [
        ("prog", world.pin_dir.join("progs/sock_connect4"), &old_prog),
        ("link", world.pin_dir.join("links/sock_connect4"), &old_link),
    ] {
        let out = std::process::Command::new("bpftool")
            .args([kind, "pin", "pinned"])
            .arg(&from)
            .arg(to)
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    world.start_ferryd();
    assert!(!old_prog.exists() && !old_link.exists());
    assert!(world.ferryd_log().contains("removed a stale pin"));
    assert!(world.pin_dir.join("links/sock_connect4").exists());
}

#[test]
fn the_xdp_prefilter_stays_off_a_veth_uplink_unless_asked() {
    // Worlds ask for it: it is on.
    let mut world = World::new();
    assert!(has_attachment(
        &datapath(&world),
        "uplink0",
        "xdp_prefilter",
        "xdp"
    ));
    let pin = world.pin_dir.join("links/xdp-uplink0");
    assert!(pin.exists());
    // `auto` on a veth uplink detaches what an earlier ferryd attached.
    world.stop_ferryd();
    world.extra_args = vec!["--xdp-prefilter".into(), "auto".into()];
    world.start_ferryd();
    let d = datapath(&world);
    assert!(
        !has_attachment(&d, "uplink0", "xdp_prefilter", "xdp"),
        "{d}"
    );
    assert!(has_attachment(
        &d,
        "uplink0",
        "uplink_ingress",
        "tc ingress"
    ));
    assert!(!pin.exists());
    let link = world
        .in_host("ip", &["-d", "link", "show", "uplink0"])
        .output()
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "XDP still attached: {link}");
}

/// Runs `ferry <args> | head -1` in a shell; ferry's exit status and
/// stderr, and the line head kept.
fn first_line_of(world: &World, args: &str) -> (String, String, String) {
    let dir = world.dir.join("pipe");
    std::fs::create_dir_all(&dir).expect("dir");
    let (err, code) = (dir.join("err"), dir.join("code"));
    let ferry = ferry_integration::bin_dir().join("ferry");
    let script = format!(
        "{{ {} -H {} {args} 2>{}; echo $? >{}; }} | head -1",
        ferry.display(),
        world.socket.display(),
        err.display(),
        code.display()
    );
    let head = check(std::process::Command::new("sh").args(["-c", &script]));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    (head, read(&code).trim().to_owned(), read(&err))
}

/// `ferry conntrack list | head -1` and `ferry logs C | head -1` on output
/// far larger than a pipe holds: the reader goes away after a line, and
/// ferry ends quietly, successful, with nothing on stderr (it panicked
/// with "failed printing to stdout: Broken pipe").
#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let world = World::with_ferryd_args(&["--ct-timeout", "udp_unreplied=600"]);
    let c = world.run("busy", &["sleep", "infinity"]);
    check(&mut world.exec(&c, "python3", &["-c", UDP_FLOWS, "2000", CLIENT_IP]));
    let (head, code, err) = first_line_of(&world, "conntrack list");
    assert!(head.starts_with("PROTO"), "{head}");
    assert_eq!((code.as_str(), err.as_str()), ("0", ""));

    world.ferry_ok(&["run", "-d", "--name", "loud", "--", "seq", "1", "300000"]);
    assert!(wait_until(Duration::from_secs(10), || world
        .inspect("loud")["State"]["Status"]
        == "exited"));
    let (head, code, err) = first_line_of(&world, "logs loud");
    assert_eq!(head, "1\n");
    assert_eq!((code.as_str(), err.as_str()), ("0", ""));
}
