//! Looking inside a running datapath with ferry's own commands: what is
//! attached where, how full the maps are, per-container counters, and the
//! tracked flows, each checked against traffic the test sent.

use ferry_integration::{CLIENT_IP, Container, HOST_UPLINK_IP, World, ping};
use serde_json::Value;

fn datapath(world: &World) -> Value {
    serde_json::from_str(&world.ferry_ok(&["datapath", "--json"])).expect("datapath JSON")
}

fn has_attachment(d: &Value, target: &str, program: &str, hook: &str) -> bool {
    d["Attachments"].as_array().is_some_and(|all| {
        all.iter()
            .any(|a| a["Target"] == target && a["Program"] == program && a["Hook"] == hook)
    })
}

fn map<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["Maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["Name"] == name))
        .unwrap_or_else(|| panic!("no map {name} in {d}"))
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
        "sock_getpeername4",
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
    let ct_before = map(&d, "ct")["Entries"].as_u64().expect("ct entries");
    assert!(ping(&c.netns, CLIENT_IP, 1, &[]));
    let ct_after = map(&datapath(&world), "ct")["Entries"]
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
