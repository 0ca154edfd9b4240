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

/// A TCP client holding one connection open: a line written comes back
/// (the server echoes).
struct Held {
    child: std::process::Child,
    out: std::sync::mpsc::Receiver<String>,
}

impl Held {
    fn connect(mut cmd: std::process::Command) -> Self {
        use std::io::BufRead as _;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn socat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, out }
    }

    /// Sends `line`; whether it came back within 3 s.
    fn echoes(&mut self, line: &str) -> bool {
        use std::io::Write as _;
        let Some(stdin) = self.child.stdin.as_mut() else {
            return false;
        };
        if writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return false;
        }
        self.out
            .recv_timeout(Duration::from_secs(3))
            .is_ok_and(|got| got == line)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn states(world: &World) -> Vec<String> {
    flows(world)
        .iter()
        .map(|f| f["State"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_syn_flood_stays_half_open_and_ages_out_while_established_flows_live() {
    let world = World::with_ferryd_args(&[
        "--ct-timeout",
        "tcp_syn_recv=3",
        // SYNs the container's backlog dropped stay unanswered.
        "--ct-timeout",
        "tcp_syn=3",
        "--ct-timeout",
        "udp_unreplied=3",
        "--ct-gc-interval",
        "1",
    ]);
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8090:80",
        "-p",
        "8091:81/udp",
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        "EXEC:cat",
    ]);
    assert_eq!(
        tcp_exchange(&world.client_ns_path(), HOST_UPLINK_IP, 8090, "up\n"),
        "up\n"
    );
    let target = format!("TCP:{HOST_UPLINK_IP}:8090,connect-timeout=2");
    let mut idle = Held::connect(world.in_client("socat", &["-", &target]));
    assert!(idle.echoes("before"), "the held connection does not work");

    // Bounded: 2,000 SYNs from random sources in about a second, none of
    // which completes its handshake (the SYN-ACKs go nowhere). A UDP
    // datagram nobody answers.
    let flood = ferry_integration::output(&mut world.in_client(
        "hping3",
        &[
            "-q",
            "-S",
            "--rand-source",
            "-p",
            "8090",
            "-c",
            "2000",
            "-i",
            "u400",
            HOST_UPLINK_IP,
        ],
    ));
    assert!(
        flood.status.success() || !flood.stderr.is_empty(),
        "hping3 did not run"
    );
    let _ = ferry_integration::output(
        world
            .in_client(
                "sh",
                &[
                    "-c",
                    &format!("echo x | socat -T 1 - UDP:{HOST_UPLINK_IP}:8091"),
                ],
            )
            .stderr(Stdio::null()),
    );
    let seen = states(&world);
    let half_open = seen.iter().filter(|s| *s == "syn_recv").count();
    assert!(
        half_open > 500,
        "the flood is not tracked as syn_recv: {half_open}"
    );
    assert!(
        seen.iter().filter(|s| *s == "established").count() == 1,
        "only the held connection is established: {:?}",
        seen.iter().filter(|s| *s != "syn_recv").collect::<Vec<_>>()
    );
    assert!(seen.iter().any(|s| s == "udp_unreplied"), "{seen:?}");

    // The flood ages out on the half-open timeout; the held connection
    // stays, and still works.
    let mut left = Vec::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            left = states(&world);
            left == ["established"]
        }),
        "left after the flood: {} flows, {:?}",
        left.len(),
        left.iter().take(5).collect::<Vec<_>>()
    );
    assert!(idle.echoes("after"), "the held connection broke");
    assert_eq!(
        tcp_exchange(&world.client_ns_path(), HOST_UPLINK_IP, 8090, "new\n"),
        "new\n"
    );
}
