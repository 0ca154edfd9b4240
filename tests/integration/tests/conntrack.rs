//! Connection tracking as users see it: `ferry conntrack list` shows the
//! flows with their translation and state; closed and idle flows are
//! collected; `flush` forgets them.

use std::{process::Stdio, time::Duration};

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, World, in_netns, tcp_exchange, wait_until,
};
use serde_json::Value;

/// A `socat - <target>` that stays connected while its stdin (a pipe the
/// handle holds) is open.
fn holding(mut cmd: std::process::Command) -> Background {
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    Background::spawn(cmd)
}

fn flows(world: &World) -> Vec<Value> {
    let out = world.ferry_ok(&["conntrack", "list", "--json"]);
    serde_json::from_str(&out).expect("conntrack JSON")
}

#[test]
fn conntrack_lists_published_and_masqueraded_flows() {
    let world = World::new();
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8089:80",
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        "EXEC:cat",
    ]);
    let web = world.container("web");
    let _server = Background::spawn(
        world.in_client("socat", &["TCP-LISTEN:7300,fork,reuseaddr", "EXEC:cat"]),
    );
    // Both servers answer before the long-lived clients start.
    assert_eq!(
        tcp_exchange(&world.client_ns_path(), HOST_UPLINK_IP, 8089, "up\n"),
        "up\n"
    );
    assert_eq!(tcp_exchange(&web.netns, CLIENT_IP, 7300, "up\n"), "up\n");
    world.ferry_ok(&["conntrack", "flush"]);
    // Long-lived connections both ways: a client holding a published-port
    // connection open, and the container holding one to the outside.
    let inbound = format!("TCP:{HOST_UPLINK_IP}:8089,connect-timeout=2");
    let _inbound = holding(world.in_client("socat", &["-", &inbound]));
    let outbound = format!("TCP:{CLIENT_IP}:7300,connect-timeout=2");
    let _outbound = holding(in_netns(&web.netns, "socat", &["-", &outbound]));
    let mut seen = Vec::new();
    let found = wait_until(Duration::from_secs(5), || {
        seen = flows(&world);
        let dnat = seen.iter().any(|f| {
            f["Nat"] == "dnat"
                && f["Dst"] == format!("{HOST_UPLINK_IP}:8089")
                && f["Translated"] == format!("{}:80", web.ip)
                && f["Src"].as_str().is_some_and(|s| s.starts_with(CLIENT_IP))
                && f["State"] == "established"
        });
        let snat = seen.iter().any(|f| {
            f["Nat"] == "snat"
                && f["Dst"] == format!("{CLIENT_IP}:7300")
                && f["Translated"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("{HOST_UPLINK_IP}:6")))
                && f["Src"].as_str().is_some_and(|s| s.starts_with(&web.ip))
                && f["State"] == "established"
        });
        dnat && snat
    });
    assert!(found, "flows not listed as expected: {seen:#?}");
    let table = world.ferry_ok(&["conntrack", "list"]);
    assert!(
        table.contains("established") && table.contains("dnat"),
        "{table}"
    );

    world.ferry_ok(&["conntrack", "flush"]);
    assert!(flows(&world).is_empty(), "flush left flows");
}

#[test]
fn closed_and_idle_flows_are_collected() {
    let world = World::with_ferryd_args(&[
        "--ct-timeout",
        "tcp_closing=1",
        "--ct-timeout",
        "udp=1",
        "--ct-gc-interval",
        "1",
    ]);
    let c = world.run("short", &["sleep", "infinity"]);
    let _tcp = Background::spawn(
        world.in_client("socat", &["TCP-LISTEN:7301,fork,reuseaddr", "EXEC:cat"]),
    );
    let _udp = Background::spawn(world.in_client("socat", &["UDP-RECVFROM:7302,fork", "EXEC:cat"]));
    assert_eq!(tcp_exchange(&c.netns, CLIENT_IP, 7301, "bye\n"), "bye\n");
    let udp = format!("echo once | socat -T 1 - UDP:{CLIENT_IP}:7302");
    let _ =
        ferry_integration::output(in_netns(&c.netns, "sh", &["-c", &udp]).stderr(Stdio::null()));
    assert!(!flows(&world).is_empty(), "the flows were never tracked");
    let mut left = Vec::new();
    assert!(
        wait_until(Duration::from_secs(8), || {
            left = flows(&world);
            left.is_empty()
        }),
        "closed/idle flows were not collected: {left:#?}"
    );
}
