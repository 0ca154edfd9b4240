//! ferry-cni driven as a CNI runtime drives it (the spec's variables, the
//! configuration on stdin, results cached for CHECK and DEL): a namespace
//! the runtime made gets ferry's datapath, published ports from outside and
//! from the host's localhost, masquerade, traffic with ferry's own
//! containers; errors are CNI errors that leave nothing behind; DEL works
//! after the namespace is gone and after a ferryd restart; GC removes what
//! the runtime no longer knows.

use std::{path::Path, time::Duration};

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, TempNetns, World, cni::Runtime, in_netns, ping,
    tcp_exchange, unique_name, wait_until,
};
use serde_json::{Value, json};

/// A server in `ns` answering each TCP connection on `port` with `reply`
/// (`$SOCAT_PEERADDR`: the peer's address).
fn responder(ns: &Path, port: u16, reply: &str) -> Background {
    Background::spawn(in_netns(
        ns,
        "socat",
        &[
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            &format!("SYSTEM:{reply}"),
        ],
    ))
}

/// The address of an ADD result, without its prefix.
fn address(result: &Value) -> String {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {result}"));
    cidr.trim_end_matches("/32").to_owned()
}

fn ports(list: &[(u16, u16, &str)]) -> Value {
    json!({
        "portMappings": list
            .iter()
            .map(|(host, container, proto)| json!({
                "hostPort": host, "containerPort": container, "protocol": proto,
            }))
            .collect::<Vec<_>>()
    })
}

#[test]
fn a_cni_namespace_gets_published_ports_masquerade_and_c2c() {
    let world = World::new();
    let before = world.footprint();
    let pod = TempNetns::new(&unique_name("fycp"));
    let mut cni = Runtime::new(&world, "ferrynet", "bridge");

    let version = cni.version().ok();
    assert_eq!(version["cniVersion"], "1.0.0");
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.1.0")) && v.contains(&json!("0.4.0"))),
        "{version}"
    );
    assert_eq!(cni.status().ok(), Value::Null);

    let result = cni
        .add(
            "c0ffee01",
            &pod.path(),
            "IgnoreUnknown=1;K8S_POD_NAME=web1",
            ports(&[(18080, 80, "tcp")]),
        )
        .ok();
    // What podman needs: the address points at the interface in the sandbox.
    assert_eq!(result["cniVersion"], "1.1.0");
    let at = result["ips"][0]["interface"].as_u64().expect("interface") as usize;
    assert_eq!(result["interfaces"][at]["name"], "eth0");
    assert_eq!(
        result["interfaces"][at]["sandbox"],
        pod.path().display().to_string()
    );
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    let ip = address(&result);
    assert!(ip.starts_with("10.89.0."), "{ip}");
    assert!(pod.ip(&["-4", "addr", "show", "eth0"]).contains(&ip));

    let _web = responder(&pod.path(), 80, "echo web $SOCAT_PEERADDR");
    // From outside, through the uplink's DNAT: the pod sees the client.
    assert_eq!(
        tcp_exchange(&world.client_ns_path(), HOST_UPLINK_IP, 18080, "").trim(),
        format!("web {CLIENT_IP}")
    );
    // From the host's localhost, through the socket hooks.
    let local = tcp_exchange(&world.host_ns_path(), "127.0.0.1", 18080, "");
    assert!(local.starts_with("web "), "{local}");
    // Out through masquerade: the client sees the host's uplink address.
    let _outside = responder(&world.client_ns_path(), 7000, "echo out $SOCAT_PEERADDR");
    assert_eq!(
        tcp_exchange(&pod.path(), CLIENT_IP, 7000, "").trim(),
        format!("out {HOST_UPLINK_IP}")
    );
    // With a ferry container on the same network, both ways.
    let c1 = world.run("c1", &["sleep", "infinity"]);
    assert!(ping(&c1.netns, &ip, 2, &[]), "c1 -> pod");
    assert!(ping(&pod.path(), &c1.ip, 2, &[]), "pod -> c1");
    // It is a member of the network like a container.
    let net = world.ferry_ok(&["network", "inspect", "bridge"]);
    assert!(net.contains("web1") && net.contains(&ip), "{net}");

    assert_eq!(cni.check("c0ffee01", &pod.path()).ok(), Value::Null);
    assert_eq!(
        cni.del("c0ffee01", &pod.path().display().to_string()).ok(),
        Value::Null
    );
    assert!(
        !pod.ip(&["link", "show"]).contains("eth0"),
        "eth0 left in the namespace"
    );
    // DEL is idempotent; CHECK of a deleted attachment fails.
    cni.del("c0ffee01", &pod.path().display().to_string()).ok();
    let (code, msg) = cni.check("c0ffee01", &pod.path()).err();
    assert_eq!(code, 3, "{msg}");
    world.ferry_ok(&["rm", "-f", "c1"]);
    assert_eq!(world.footprint(), before);
}

#[test]
fn cni_errors_name_the_problem_and_leave_nothing() {
    let world = World::new();
    let pod = TempNetns::new(&unique_name("fycp"));
    let mut cni = Runtime::new(&world, "ferrynet", "bridge");
    world.ferry_ok(&[
        "run", "-d", "--name", "holder", "-p", "18081:80", "--", "sleep", "infinity",
    ]);
    let before = world.footprint();

    // A host port another container publishes: podman shows this message.
    let (code, msg) = cni
        .add("c1", &pod.path(), "", ports(&[(18081, 80, "tcp")]))
        .err();
    assert_eq!(code, 100, "{msg}");
    assert!(
        msg.contains("port 18081 is already published by container holder"),
        "{msg}"
    );
    assert_eq!(world.footprint(), before, "a failed ADD left something");
    // A failed ADD is followed by a DEL (podman does that): no error.
    cni.del("c1", &pod.path().display().to_string()).ok();

    for (netns, code, says) in [
        ("/run/netns/fy-no-such-ns", 3, "fy-no-such-ns"),
        ("/proc/version", 7, "not a network namespace"),
    ] {
        let (got, msg) = cni.add("c2", Path::new(netns), "", json!({})).err();
        assert_eq!(got, code, "{msg}");
        assert!(msg.contains(says), "{says} missing from {msg}");
    }
    let (code, msg) = cni
        .add("c3", &pod.path(), "", ports(&[(18082, 80, "sctp")]))
        .err();
    assert!(code == 7 && msg.contains("sctp"), "{code} {msg}");
    let mut other = Runtime::new(&world, "othernet", "nope");
    let (code, msg) = other.add("c4", &pod.path(), "", json!({})).err();
    assert!(
        code == 7 && msg.contains("network nope not found"),
        "{code} {msg}"
    );
    // As with Docker, a static address is for user-defined networks.
    let (code, msg) = cni.add("c5", &pod.path(), "IP=10.89.0.9", json!({})).err();
    assert!(
        code == 7 && msg.contains("user-defined networks"),
        "{code} {msg}"
    );
    assert_eq!(world.footprint(), before, "failed ADDs left something");

    // ferryd down: STATUS says the plugin is not available, ADD to try
    // again later; DEL does not block the runtime's cleanup.
    let mut down = Runtime::new(&world, "ferrynet", "bridge");
    down.conf["socket"] = json!(world.dir.join("nobody.sock"));
    assert_eq!(down.status().err().0, 50);
    let (code, msg) = down.add("c6", &pod.path(), "", json!({})).err();
    assert!(
        code == 11 && msg.contains("ferryd is not running"),
        "{code} {msg}"
    );
    down.del("c6", "").ok();
}

#[test]
fn cni_attachments_survive_a_ferryd_restart_del_after_the_namespace_and_gc() {
    let mut world = World::new();
    world.ferry_ok(&["network", "create", "--subnet", "10.91.7.0/24", "cninet"]);
    let before = world.footprint();
    let mut cni = Runtime::new(&world, "ferrynet", "cninet");
    let (a, b) = (
        TempNetns::new(&unique_name("fycp")),
        TempNetns::new(&unique_name("fycp")),
    );
    let ra = cni
        .add("aaaa", &a.path(), "", ports(&[(18090, 80, "tcp")]))
        .ok();
    cni.add("bbbb", &b.path(), "IP=10.91.7.77", json!({})).ok();
    let web = responder(&a.path(), 80, "echo a $SOCAT_PEERADDR");
    assert_eq!(
        tcp_exchange(&world.client_ns_path(), HOST_UPLINK_IP, 18090, "").trim(),
        format!("a {CLIENT_IP}")
    );
    assert!(b.ip(&["-4", "addr", "show", "eth0"]).contains("10.91.7.77"));

    // A restarted ferryd adopts both: the port stays served, CHECK holds,
    // the address stays taken.
    world.stop_ferryd();
    world.start_ferryd();
    assert_eq!(
        tcp_exchange(&world.client_ns_path(), HOST_UPLINK_IP, 18090, "").trim(),
        format!("a {CLIENT_IP}")
    );
    cni.check("aaaa", &a.path()).ok();
    let c = TempNetns::new(&unique_name("fycp"));
    let (code, msg) = cni.add("cccc", &c.path(), "IP=10.91.7.77", json!({})).err();
    assert_eq!(code, 100, "{msg}");

    // The runtime removed a's namespace before its DEL (containerd sends
    // an empty CNI_NETNS then).
    let a_ip = address(&ra);
    drop(web);
    drop(a);
    cni.del("aaaa", "").ok();
    assert!(
        !world
            .ferry_ok(&["network", "inspect", "cninet"])
            .contains(&a_ip),
        "a is still a member"
    );
    // GC keeping nothing removes b.
    cni.gc(&[]).ok();
    assert!(
        !b.ip(&["link", "show"]).contains("eth0"),
        "GC left b's interface"
    );
    // A GC of another CNI network keeps this one's attachments.
    cni.add("dddd", &c.path(), "", json!({})).ok();
    Runtime::new(&world, "othernet", "cninet").gc(&[]).ok();
    cni.check("dddd", &c.path()).ok();
    cni.del("dddd", &c.path().display().to_string()).ok();
    assert!(
        wait_until(Duration::from_secs(5), || world.footprint() == before),
        "left behind: {:?} vs {:?}",
        world.footprint(),
        before
    );

    // Many attachments come and go without a trace.
    for n in 0..30 {
        let id = format!("cycle{n}");
        cni.add(&id, &c.path(), "", ports(&[(18100, 80, "tcp")]))
            .ok();
        cni.del(&id, &c.path().display().to_string()).ok();
    }
    assert_eq!(world.footprint(), before);
}
