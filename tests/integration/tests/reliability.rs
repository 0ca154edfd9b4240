//! Reliability: full maps are errors, not silent drops; a crash of ferryd
//! breaks no traffic; a restart finds and clears what a crash left behind.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, World, check, in_netns, output, wait_until,
};

fn run_fails(world: &World, args: &[&str], says: &[&str]) {
    let out = world.ferry(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    for s in says {
        assert!(err.contains(s), "{args:?}: {s:?} missing from: {err}");
    }
}

#[test]
fn full_endpoint_and_port_maps_are_clear_errors_that_leave_nothing() {
    let world = World::with_ferryd_args(&["--endpoint-max", "2", "--port-max", "3"]);
    let sleep = ["sleep", "infinity"];
    world.run_with("a", &["-p", "8101:80", "-p", "8102:80"], &sleep);
    // One port left: a container publishing two gets the first into the
    // map, fails on the second, and takes both out again.
    let before = world.footprint();
    run_fails(
        &world,
        &[
            "run", "-d", "--name", "b", "-p", "8103:80", "-p", "8104:80", "--", "sleep", "1",
        ],
        &["the portmap map is full (3 entries)", "--port-max"],
    );
    assert_eq!(world.footprint(), before);
    world.run_with("b", &["-p", "8103:80"], &sleep);
    // Two containers fill the endpoint map.
    let before = world.footprint();
    run_fails(
        &world,
        &["run", "-d", "--name", "c", "--", "sleep", "1"],
        &["the endpoints map is full (2 entries)", "--endpoint-max"],
    );
    assert_eq!(world.footprint(), before);
    // Room again once one is gone.
    world.ferry_ok(&["rm", "-f", "a"]);
    world.run_with("c", &["-p", "8101:80", "-p", "8102:80"], &sleep);
}

/// Starts `cmd` in the background with its output in `<world dir>/<name>.out`.
fn traffic(world: &World, name: &str, mut cmd: Command) -> (Background, PathBuf) {
    let path = world.dir.join(format!("{name}.out"));
    let file = File::create(&path).expect("output file");
    cmd.stdout(file.try_clone().expect("fd")).stderr(file);
    (
        Background::spawn(cmd).with_grace(Duration::from_secs(2)),
        path,
    )
}

/// Waits for a background command to end by itself; its exit status and output.
fn finish(mut job: (Background, PathBuf), limit: Duration) -> (bool, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = job.0.child().try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{} ran past {limit:?}",
            job.1.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        std::fs::read_to_string(&job.1).unwrap_or_default(),
    )
}

/// Whether a GET of `url` from the client namespace succeeds.
fn http_ok(world: &World, url: &str) -> bool {
    let mut curl = world.in_client("curl", &["-sf", "-m", "2", url]);
    output(curl.stdin(Stdio::null())).status.success()
}

fn ct_created(world: &World) -> u64 {
    world.datapath()["Conntrack"]["Created"]
        .as_u64()
        .expect("Created")
}

#[test]
fn traffic_survives_a_killed_ferryd_and_the_restart_adopts_without_resetting() {
    let mut world = World::new();
    let sleep = ["sleep", "infinity"];
    let web = world.run_with(
        "web",
        &["-p", "8080:80"],
        &["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"],
    );
    let server = world.run("server", &["iperf3", "-s", "-p", "5201"]);
    let client = world.run("client", &sleep);
    let talker = world.run("talker", &sleep);
    let _echo =
        Background::spawn(world.in_client("socat", &["TCP-LISTEN:9000,reuseaddr,fork", "PIPE"]));
    let url = format!("http://{HOST_UPLINK_IP}:8080/hostname");
    assert!(
        wait_until(Duration::from_secs(5), || http_ok(&world, &url)),
        "the published port never answered"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        let probe = ["10", "iperf3", "-c", &server.ip, "-n", "1M"];
        output(&mut in_netns(&client.netns, "timeout", &probe))
            .status
            .success()
    }));
    // Eight seconds of traffic of each kind; ferryd is killed after two and
    // restarted after four.
    let wrk = traffic(
        &world,
        "wrk",
        world.in_client("wrk", &["-t1", "-c4", "-d8s", "--timeout", "2s", &url]),
    );
    let iperf = traffic(
        &world,
        "iperf3",
        in_netns(
            &client.netns,
            "iperf3",
            &["-c", &server.ip, "-t", "8", "-p", "5201"],
        ),
    );
    // One masqueraded connection, a line every 100 ms, each echoed back.
    let script = format!(
        "for i in $(seq 80); do echo line$i; sleep 0.1; done | socat -t 3 - TCP:{CLIENT_IP}:9000"
    );
    let long = traffic(
        &world,
        "long",
        in_netns(&talker.netns, "sh", &["-c", &script]),
    );
    std::thread::sleep(Duration::from_secs(2));
    let attachments = world.datapath()["Attachments"].clone();
    let created = ct_created(&world);
    world.kill_ferryd();

    // While ferryd is down, new connections to the published port work.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert!(
            http_ok(&world, &url),
            "a new connection failed while ferryd was down"
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    world.start_ferryd();
    assert_eq!(world.container("web").pid, web.pid, "web was not adopted");
    assert_eq!(
        world.datapath()["Attachments"],
        attachments,
        "attachments changed across the restart"
    );
    assert!(
        ct_created(&world) >= created,
        "conntrack counters were reset by the restart"
    );

    let (ok, out) = finish(wrk, Duration::from_secs(20));
    assert!(ok, "wrk failed: {out}");
    assert!(!out.contains("Socket errors"), "connections broke: {out}");
    assert!(!out.contains("Non-2xx"), "bad answers: {out}");
    let served = out
        .lines()
        .find(|l| l.contains("requests in"))
        .unwrap_or_default();
    eprintln!("wrk across the crash: {}", served.trim());
    let (ok, out) = finish(iperf, Duration::from_secs(20));
    assert!(
        ok && out.contains("receiver"),
        "iperf3 between containers broke: {out}"
    );
    let (ok, out) = finish(long, Duration::from_secs(20));
    let echoed = out.lines().filter(|l| l.starts_with("line")).count();
    assert!(
        ok && echoed == 80,
        "the masqueraded connection broke after {echoed} lines: {out}"
    );
    // The long-lived flow is still in conntrack, under the container.
    let flows = world.ferry_ok(&["conntrack", "list", "--container", "talker"]);
    assert!(
        flows.contains(":9000"),
        "the masqueraded flow is gone: {flows}"
    );
}

/// `bpftool map update` of a pinned map with zeroed value bytes.
fn map_insert(world: &World, map: &str, key: &[u8]) {
    let pin = world.pin_dir.join(map);
    let info: serde_json::Value = serde_json::from_str(&check(
        Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&pin),
    ))
    .expect("bpftool JSON");
    let value_size = info["bytes_value"].as_u64().expect("bytes_value") as usize;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x}")).collect::<Vec<_>>();
    check(
        Command::new("bpftool")
            .args(["map", "update", "pinned"])
            .arg(&pin)
            .arg("key")
            .args(hex(key))
            .arg("value")
            .args(hex(&vec![0u8; value_size])),
    );
}

#[test]
fn a_restart_clears_what_a_crash_left_behind() {
    let mut world = World::new();
    world.run_with(
        "keep",
        &["-p", "8201:80"],
        &["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"],
    );
    let clean = world.footprint();
    world.kill_ferryd();

    // What a crash between two steps of a run can leave: a veth, cgroups
    // with a process in them, a container directory without a config,
    // map entries, a mount in ferry's directories, a pin of an old map.
    check(&mut world.in_host(
        "ip",
        &[
            "link",
            "add",
            "fy0123456789ab",
            "type",
            "veth",
            "peer",
            "name",
            "fyt-peer0",
        ],
    ));
    let stray = Background::spawn({
        let mut c = Command::new("sleep");
        c.arg("600");
        c
    });
    let id = "0123456789ab".repeat(5) + "cdef";
    for keep in world.container_cgroups() {
        let dir = keep.parent().expect("parent").join(&id);
        std::fs::create_dir(&dir).expect("leftover cgroup");
        std::fs::write(dir.join("cgroup.procs"), stray.id().to_string()).expect("join cgroup");
    }
    std::fs::create_dir_all(world.dir.join("state/containers").join(&id)).expect("state dir");
    map_insert(&world, "endpoints", &[10, 89, 0, 99]);
    map_insert(&world, "portmap", &[0, 0, 0, 0, 0x20, 0x6b, 6, 0]);
    map_insert(&world, "sock_netns", &77u64.to_ne_bytes());
    let leak = world.dir.join("state/leak");
    std::fs::create_dir_all(&leak).expect("mount point");
    check(
        Command::new("mount")
            .args(["-t", "tmpfs", "ferry-leak"])
            .arg(&leak),
    );
    check(
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(world.pin_dir.join("old_map"))
            .args([
                "type", "hash", "key", "4", "value", "4", "entries", "1", "name", "old_map",
            ]),
    );

    world.start_ferryd();
    assert_eq!(world.footprint(), clean, "leftovers survived the restart");
    let log = world.ferryd_log();
    for says in [
        "removed the cgroups of no running container",
        "removed a veth of no endpoint",
        "removed a datapath entry of no endpoint",
        "unmounted a leftover mount",
        "removed a stale pin",
        "removing a container directory without a config",
    ] {
        assert!(log.contains(says), "not logged: {says}\n{log}");
    }
    let mut stray = stray;
    assert!(
        wait_until(Duration::from_secs(5), || stray
            .child()
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "the process in the leftover cgroup lives on"
    );
    let url = format!("http://{HOST_UPLINK_IP}:8201/hostname");
    assert!(
        http_ok(&world, &url),
        "the adopted container stopped answering"
    );
}

#[test]
fn a_restart_publishes_endpoints_again_into_a_map_made_anew() {
    let mut world = World::new();
    let web = world.run_with(
        "web",
        &["-p", "8080:80"],
        &["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"],
    );
    let url = format!("http://{HOST_UPLINK_IP}:8080/hostname");
    assert!(
        wait_until(Duration::from_secs(5), || http_ok(&world, &url)),
        "the published port never answered"
    );
    world.stop_ferryd();
    // What a build whose `Endpoint` has another layout does to the pinned
    // map: a new, empty one.
    std::fs::remove_file(world.pin_dir.join("endpoints")).expect("unpin endpoints");
    world.start_ferryd();
    assert!(
        wait_until(Duration::from_secs(5), || http_ok(&world, &url)),
        "the restart did not publish the container again"
    );
    // Published once, in the new map, with its counters counting.
    let datapath = world.datapath();
    assert_eq!(
        ferry_integration::map_of(&datapath, "endpoints")["Entries"],
        1
    );
    let stats = world.stats(&web.name);
    assert!(stats["RxPackets"].as_u64().unwrap_or(0) > 0, "{stats}");
}
