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
    /// Sends per check: 1 for TCP; more for UDP, where a datagram lost to a
    /// backlog still full from a flood is the protocol's nature (whether the
    /// flow's entries survived is checked on their own).
    tries: u32,
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
        Self {
            child,
            out,
            tries: 1,
        }
    }

    /// Sends `line` (up to `tries` times); whether it came back within 3 s
    /// of a send.
    fn echoes(&mut self, line: &str) -> bool {
        use std::io::Write as _;
        for _ in 0..self.tries {
            // A late echo of an earlier try is not this one's answer.
            while self.out.try_recv().is_ok() {}
            let Some(stdin) = self.child.stdin.as_mut() else {
                return false;
            };
            if writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .is_err()
            {
                return false;
            }
            if self
                .out
                .recv_timeout(Duration::from_secs(3))
                .is_ok_and(|got| got == line)
            {
                return true;
            }
        }
        false
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

/// One connection attempt: whether `payload` came back.
fn exchange_once(ns: &std::path::Path, ip: &str, port: u16, payload: &str) -> bool {
    use std::io::Write as _;
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let Ok(mut child) = in_netns(ns, "socat", &["-T", "3", "-", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(payload.as_bytes());
    }
    child
        .wait_with_output()
        .is_ok_and(|out| out.status.success() && out.stdout == payload.as_bytes())
}

/// A held connection kept busy on a thread until `stop`: a line every
/// 50 ms, each expected back. Returns it with the count of lines lost.
fn keep_busy(
    mut held: Held,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Held, usize, usize)> {
    std::thread::spawn(move || {
        let (mut sent, mut lost) = (0, 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            sent += 1;
            if !held.echoes(&format!("busy {sent}")) {
                lost += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (held, sent, lost)
    })
}

/// A UDP echo server on port 81 in one process (socat would fork one per
/// datagram of a flood).
const UDP_ECHO: &str = "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((\"\", 81))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)";

/// An hping3 flood from random sources in the client namespace: `count`
/// packets, one every `gap_us`.
fn flood(world: &World, proto: &str, port: u16, count: u32, gap_us: u32) -> Background {
    let (count, gap, port) = (count.to_string(), format!("u{gap_us}"), port.to_string());
    let mut cmd = world.in_client(
        "hping3",
        &[
            "-q",
            proto,
            "--rand-source",
            "-p",
            &port,
            "-c",
            &count,
            "-i",
            &gap,
            HOST_UPLINK_IP,
        ],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Background::spawn(cmd)
}

/// The attacker: SYN and UDP floods from random sources against
/// published ports, each of more flows than both conntrack tables hold,
/// while established flows of every class exist: an idle and a busy
/// published-port TCP connection, an idle and a busy masqueraded TCP
/// connection, a masqueraded UDP exchange. None of them loses its entries
/// or a line; new connections are served during and after the flood; the
/// flood's entries are listed half-open and age out on that timeout.
#[test]
fn floods_evict_no_established_flow_and_age_out() {
    const CT_MAX: u32 = 2048;
    let world = World::with_ferryd_args(&[
        "--ct-max",
        &CT_MAX.to_string(),
        "--ct-new-max",
        &CT_MAX.to_string(),
        "--ct-timeout",
        "tcp_syn_recv=3",
        // SYNs the container's backlog dropped stay unanswered.
        "--ct-timeout",
        "tcp_syn=3",
        "--ct-timeout",
        "udp_unreplied=3",
        "--ct-timeout",
        "udp=3",
        "--ct-timeout",
        "tcp_closing=1",
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
        "sh",
        "-c",
        &format!("socat TCP-LISTEN:80,fork,reuseaddr EXEC:cat & exec python3 -c '{UDP_ECHO}'"),
    ]);
    let talker = world.run("talker", &["sleep", "infinity"]);
    let _tcp_echo = Background::spawn(
        world.in_client("socat", &["TCP-LISTEN:7300,fork,reuseaddr", "EXEC:cat"]),
    );
    let _udp_echo =
        Background::spawn(world.in_client("socat", &["UDP-RECVFROM:7302,fork", "EXEC:cat"]));
    let client_ns = world.client_ns_path();
    assert_eq!(
        tcp_exchange(&client_ns, HOST_UPLINK_IP, 8090, "up\n"),
        "up\n"
    );
    assert_eq!(tcp_exchange(&talker.netns, CLIENT_IP, 7300, "up\n"), "up\n");
    world.ferry_ok(&["conntrack", "flush"]);

    let published = format!("TCP:{HOST_UPLINK_IP}:8090,connect-timeout=2");
    let outside = format!("TCP:{CLIENT_IP}:7300,connect-timeout=2");
    let udp_outside = format!("UDP:{CLIENT_IP}:7302");
    let mut held = [
        (
            "idle published",
            world.in_client("socat", &["-", &published]),
        ),
        (
            "idle masqueraded",
            in_netns(&talker.netns, "socat", &["-", &outside]),
        ),
        (
            "masqueraded UDP",
            in_netns(&talker.netns, "socat", &["-", &udp_outside]),
        ),
    ]
    .map(|(name, cmd)| {
        let mut h = Held::connect(cmd);
        if name == "masqueraded UDP" {
            h.tries = 3;
        }
        (name, h)
    });
    for (name, h) in &mut held {
        // Twice: the second exchange assures the flow (its originator
        // speaks again after the answer).
        assert!(h.echoes("one") && h.echoes("two"), "{name} does not work");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = [
        (
            "busy published",
            world.in_client("socat", &["-", &published]),
        ),
        (
            "busy masqueraded",
            in_netns(&talker.netns, "socat", &["-", &outside]),
        ),
    ]
    .map(|(name, cmd)| {
        let mut h = Held::connect(cmd);
        assert!(h.echoes("one") && h.echoes("two"), "{name} does not work");
        (name, keep_busy(h, stop.clone()))
    });
    let before = world.datapath()["Conntrack"].clone();
    assert!(
        before["Assured"].as_u64() >= Some(10),
        "the five flows are not all assured: {before}"
    );

    // Bounded: 20,000 SYNs and 20,000 datagrams from random sources in
    // about two seconds, each ten times what either table holds. New
    // connections are tried all along.
    let syn = flood(&world, "-S", 8090, 10 * CT_MAX, 100);
    let udp = flood(&world, "--udp", 8091, 10 * CT_MAX, 100);
    let started = std::time::Instant::now();
    let (mut tried, mut served) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        tried += 1;
        if exchange_once(&client_ns, HOST_UPLINK_IP, 8090, "during\n") {
            served += 1;
        }
    }
    let half_open = states(&world)
        .iter()
        .filter(|s| *s == "syn_recv" || *s == "syn_sent")
        .count();
    drop((syn, udp));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = world.datapath()["Conntrack"].clone();

    for (name, h) in &mut held {
        assert!(h.echoes("after"), "{name} broke in the flood");
    }
    let mut busy: Vec<(&str, Held)> = busy
        .into_iter()
        .map(|(name, thread)| {
            let (mut h, sent, lost) = thread.join().expect("busy thread");
            assert_eq!(lost, 0, "{name} lost {lost} of {sent} lines in the flood");
            assert!(h.echoes("after"), "{name} broke in the flood");
            (name, h)
        })
        .collect();
    assert!(
        served > 0,
        "no new connection was served during the flood ({tried} tried)"
    );
    assert!(half_open > 100, "the flood is not listed half-open");
    assert!(
        during["EvictedUnassured"].as_u64() > Some(u64::from(CT_MAX)),
        "the flood did not overflow ct_new: {during}"
    );
    assert_eq!(during["EvictedAssured"], 0, "{during}");

    // The flood ages out on the half-open timeouts; the five flows stay,
    // assured, and a new connection is served.
    let mut left = Vec::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            left = flows(&world);
            left.len() == 5
        }),
        "left after the flood: {} flows, {:?}",
        left.len(),
        left.iter().take(6).collect::<Vec<_>>()
    );
    assert!(left.iter().all(|f| f["Assured"] == true), "{left:#?}");
    for (name, h) in held.iter_mut().chain(busy.iter_mut()) {
        assert!(h.echoes("later"), "{name} broke after the flood");
    }
    assert!(exchange_once(&client_ns, HOST_UPLINK_IP, 8090, "new\n"));
}
