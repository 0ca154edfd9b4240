//! What ferry must refuse: bad API requests, API users outside root and the
//! configured group, outside packets aimed at a loopback-only publish, and
//! system calls the seccomp profile blocks.
//! See docs/security.md for the guarantees these tests hold ferry to.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use ferry_integration::{CLIENT_IP, World, bin_dir, check, output, wait_until};
use serde_json::Value;

/// One API call with curl over the world's socket: (status, body).
fn api(world: &World, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    let dir = world.dir.join("req");
    std::fs::create_dir_all(&dir).expect("request dir");
    let file = dir.join("body");
    std::fs::write(&file, body.unwrap_or_default()).expect("request body");
    let out = check(
        Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(&world.socket)
            .args(["-X", method, "-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://ferryd{path}")),
    );
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_owned())
}

fn message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["message"].as_str().expect("message").to_owned()
}

fn assert_refused(world: &World, path: &str, body: &[u8], status: u16, says: &str) {
    let (code, text) = api(world, "POST", path, Some(body));
    assert_eq!(
        code,
        status,
        "{path} {}: {text}",
        String::from_utf8_lossy(body)
    );
    let msg = message(&text);
    assert!(msg.contains(says), "{path}: message {msg:?} lacks {says:?}");
}

#[test]
fn bad_requests_are_refused_with_a_reason_and_leave_nothing() {
    let world = World::new();
    let run = "/containers/run";
    assert_refused(
        &world,
        run,
        b"{\"Cmd\": [\"true\"",
        400,
        "invalid request body",
    );
    assert_refused(&world, run, b"{\"Cmd\": \"true\"}", 400, "invalid type");
    assert_refused(&world, run, b"{}", 400, "no command given");
    assert_refused(&world, run, b"[1, 2]", 400, "invalid request body");
    let big = format!(
        "{{\"Cmd\": [\"true\"], \"Env\": [\"X={}\"]}}",
        "y".repeat(2 << 20)
    );
    assert_refused(
        &world,
        run,
        big.as_bytes(),
        413,
        "larger than the limit of 1.0 MiB",
    );
    let cases: [(&str, &str); 7] = [
        (r#"{"Cmd": ["sh", "-c\u0000rm"]}"#, "contains a NUL byte"),
        (
            r#"{"Cmd": ["true"], "Env": ["NOVALUE"]}"#,
            "expected KEY=VALUE",
        ),
        (
            r#"{"Cmd": ["true"], "Hostname": "a\nb"}"#,
            "invalid hostname",
        ),
        (
            r#"{"Cmd": ["true"], "Name": "../../etc"}"#,
            "invalid container name",
        ),
        (
            r#"{"Cmd": ["true"], "HostConfig": {"Rootfs": "/"}}"#,
            "is the host's root",
        ),
        (
            r#"{"Cmd": ["true"], "HostConfig": {"Binds": ["relative:/x"]}}"#,
            "absolute",
        ),
        (
            r#"{"Cmd": ["true"], "HostConfig": {"Memory": -1}}"#,
            "invalid request body",
        ),
    ];
    for (body, says) in cases {
        assert_refused(&world, run, body.as_bytes(), 400, says);
    }
    // A reference is looked up by name or id, never used as a path.
    let (code, text) = api(&world, "GET", "/containers/..%2F..%2Fstate/json", None);
    assert_eq!(code, 404, "{text}");
    let (code, text) = api(&world, "POST", "/datapath/debug?on=maybe", None);
    assert_eq!(code, 400, "{text}");
    assert!(message(&text).contains("invalid query"), "{text}");
    let c = world.run("ok", &["sleep", "infinity"]);
    assert_refused(
        &world,
        "/containers/ok/exec",
        br#"{"Cmd": ["true"], "Env": ["=x"]}"#,
        400,
        "expected KEY=VALUE",
    );
    // Only the one good container exists; refused requests created nothing.
    let list = world.ferry_ok(&["ps", "-a", "-q"]);
    assert_eq!(list.lines().count(), 1, "containers: {list}");
    let links = check(&mut world.in_host("ip", &["-o", "link", "show"]));
    let veths = links
        .lines()
        .filter(|l| !l.contains(": lo:") && !l.contains(": uplink0@"))
        .count();
    assert_eq!(veths, 1, "host links: {links}");
    assert!(c.pid > 0);
}

/// A copy of the CLI that users other than root can execute.
fn cli_for_others(world: &World) -> std::path::PathBuf {
    let cli = world.dir.join("ferry-cli");
    std::fs::copy(bin_dir().join("ferry"), &cli).expect("copy ferry");
    for p in [world.dir.as_path(), cli.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    cli
}

fn ps_as(cli: &Path, world: &World, uid: u32, groups: &str) -> std::process::Output {
    output(
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(if groups.is_empty() {
                vec!["--clear-groups".to_owned()]
            } else {
                vec![format!("--groups={groups}")]
            })
            .arg(cli)
            .arg("-H")
            .arg(&world.socket)
            .arg("ps"),
    )
}

#[test]
fn the_api_socket_admits_root_and_the_configured_group_only() {
    // 65534 is nogroup; the users below exist only as numbers.
    let world = World::with_ferryd_args(&["--group", "65534"]);
    let meta = std::fs::metadata(&world.socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    let cli = cli_for_others(&world);
    let outsider = ps_as(&cli, &world, 64_999, "");
    assert!(
        !outsider.status.success(),
        "a user outside the group got in"
    );
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(
        err.contains("Permission denied") && err.contains("--group"),
        "unclear refusal: {err}"
    );
    let member = ps_as(&cli, &world, 64_999, "65534");
    assert!(
        member.status.success(),
        "a group member was refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
}

/// Sends raw TCP SYNs from the client namespace to `dst:port`, addressed
/// to the host's uplink MAC, as a neighbour on the outside network can.
fn syn_from_outside(world: &World, dst: &str, port: u16, count: u32) {
    let mac = |mut cmd: Command| {
        let link = check(&mut cmd);
        let at = link.find("link/ether ").expect("a MAC") + "link/ether ".len();
        link[at..at + 17].to_owned()
    };
    let host_mac = mac(world.in_host("ip", &["-o", "link", "show", "uplink0"]));
    let client_mac = mac(world.in_client("ip", &["-o", "link", "show", "eth0"]));
    let script = r#"
import socket, struct, sys
dst_mac, src_mac, src, dst, port, count = sys.argv[1:7]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
s4, d4 = socket.inet_aton(src), socket.inet_aton(dst)
tcp = struct.pack("!HHIIBBHHH", 40000, int(port), 1, 0, 5 << 4, 0x02, 65535, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(s4 + d4 + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, s4, d4)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
for _ in range(int(count)):
    sock.send(eth + ip + tcp)
"#;
    check(&mut world.in_client(
        "python3",
        &[
            "-c",
            script,
            &host_mac,
            &client_mac,
            CLIENT_IP,
            dst,
            &port.to_string(),
            &count.to_string(),
        ],
    ));
}

fn port_rx(world: &World, name: &str, key: &str) -> u64 {
    world.inspect(name)["Ferry"]["PortCounters"][key]["RxPackets"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn outside_packets_to_a_loopback_publish_never_reach_the_container() {
    let world = World::new();
    let cmd = ["socat", "TCP-LISTEN:80,fork,reuseaddr", "SYSTEM:echo hi"];
    world.ferry_ok(
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "127.0.0.1:8090:80",
            "-p",
            "8091:80",
            "--",
        ]
        .into_iter()
        .chain(cmd)
        .collect::<Vec<_>>(),
    );
    // The crafted frames work: to the public publish they are translated.
    syn_from_outside(&world, ferry_integration::HOST_UPLINK_IP, 8091, 3);
    assert!(
        wait_until(Duration::from_secs(5), || port_rx(
            &world,
            "web",
            "0.0.0.0:8091/tcp"
        ) >= 3),
        "crafted SYNs did not reach the public publish: {}",
        world.inspect("web")["Ferry"]["PortCounters"]
    );
    // The same frames to 127.0.0.1 (moby#45610): not translated, and the
    // host's stack drops them as martians. (The container's counter is read
    // once the answers to the handshakes above have settled.)
    let rx = || {
        world.inspect("web")["Ferry"]["Counters"]["RxPackets"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut before = rx();
    assert!(wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = rx();
        std::mem::replace(&mut before, now) == now
    }));
    syn_from_outside(&world, "127.0.0.1", 8090, 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(port_rx(&world, "web", "127.0.0.1:8090/tcp"), 0);
    assert_eq!(
        rx(),
        before,
        "outside packets to 127.0.0.1 reached the container"
    );
}

/// keyctl, unshare(CLONE_NEWUSER), kexec_load, open_by_handle_at: the errno
/// each gets (0: allowed), then the process's seccomp mode.
const SYSCALLS: &str = "import ctypes\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
call = lambda nr, *a: 0 if libc.syscall(nr, *[ctypes.c_long(x) for x in a]) >= 0 else ctypes.get_errno()\n\
print(call(250, 0, -3, 0), call(272, 0x10000000), call(246, 0, 0, 0, 0), call(304, -100, 0, 0))\n\
print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\n";

#[test]
fn the_default_seccomp_profile_blocks_what_dockers_does_and_can_be_lifted() {
    let world = World::new();
    let python = |flags: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "python3", "-c", SYSCALLS]);
        let out = world.ferry(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Default: each is refused with EPERM, in filter mode.
    assert_eq!(python(&[]), "1 1 1 1\n2\n");
    // Unconfined: keyctl and a user namespace work; kexec and handles still
    // need capabilities the container lacks.
    let open = python(&["--security-opt", "seccomp=unconfined"]);
    let mut fields = open.split_whitespace();
    let (keyctl, unshare) = (fields.next(), fields.next());
    assert_ne!(keyctl, Some("1"), "keyctl refused unconfined: {open}");
    assert_eq!(unshare, Some("0"), "unshare refused unconfined: {open}");
    assert!(open.ends_with("\n0\n"), "{open}");

    // A profile of one's own, in Docker's format, from a file.
    let profile = world.dir.join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .expect("profile");
    let opt = format!("seccomp={}", profile.display());
    let out = world.ferry(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "--",
        "mkdir",
        "/tmp/x",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // exec runs under the container's profile too.
    world.run("confined", &["sleep", "30"]);
    let out = world.ferry_ok(&["exec", "confined", "python3", "-c", SYSCALLS]);
    assert_eq!(out, "1 1 1 1\n2\n");

    // Bad options are named and leave nothing.
    for (opt, says) in [
        ("seccomp={", "invalid seccomp profile"),
        ("apparmor=x", "unsupported security option"),
        ("seccomp=/nonexistent.json", "/nonexistent.json"),
    ] {
        let out = world.ferry(&["run", "--rm", "--security-opt", opt, "--", "true"]);
        assert!(!out.status.success(), "{opt} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{opt}: {err}");
    }
    world.ferry_ok(&["rm", "-f", "confined"]);
    assert_eq!(world.ferry_ok(&["ps", "-aq"]), "");
}

#[test]
fn capabilities_follow_cap_add_cap_drop_and_privileged() {
    let world = World::new();
    let status = |flags: &[&str], script: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = world.ferry(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cap_eff = "grep CapEff /proc/self/status | cut -f2";
    let eff = |flags: &[&str]| {
        let (_, out, err) = status(flags, cap_eff);
        assert!(!out.is_empty(), "{flags:?}: {err}");
        out
    };
    assert_eq!(eff(&[]), "00000000a80425fb");
    assert_eq!(eff(&["--cap-drop", "NET_RAW"]), "00000000a80405fb");
    assert_eq!(
        eff(&["--cap-drop", "ALL", "--cap-add", "net_bind_service"]),
        "0000000000000400"
    );
    // Every capability ferry holds itself (as this test does).
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .map(str::trim)
        .expect("CapPrm");
    assert_eq!(eff(&["--privileged"]), own);

    // CAP_SYS_ADMIN also lifts the profile's mount rule.
    let mount = "mount -t tmpfs none /mnt && echo mounted";
    assert_ne!(status(&[], mount).1, "mounted");
    let (_, out, err) = status(&["--cap-add", "SYS_ADMIN"], mount);
    assert_eq!(out, "mounted", "{err}");
    // No filter, no masked /proc paths (a masked file is /dev/null bound).
    let check = "grep Seccomp: /proc/self/status | cut -f2; [ -c /proc/timer_list ] && echo masked";
    assert_eq!(status(&[], check).1, "2\nmasked");
    let (_, out, err) = status(&["--privileged"], check);
    assert_eq!(out, "0", "{err}");

    let (code, _, err) = status(&["--cap-add", "FLY"], "true");
    assert_ne!(code, Some(0));
    assert!(err.contains("unknown capability \"FLY\""), "{err}");
}
