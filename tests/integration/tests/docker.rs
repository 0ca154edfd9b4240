//! Debian's dockerd 20.10 with ferry as its network and IPAM plugin
//! (`docker network create -d ferry --ipam-driver ferry`): `docker run -p`
//! publishes through ferry's datapath with no DNAT rule and no
//! docker-proxy; published ports from outside with the client's address
//! and from localhost, masquerade out, traffic with ferry's own
//! containers, `--ip`, a taken port as Docker's error with ferry's message,
//! network connect/disconnect, stop/start/rm, a ferryd restart while Docker
//! containers run, and nothing left behind.

use std::time::Duration;

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, World, busybox_tar, docker::Dockerd, in_netns, output,
    rulesets, wait_until,
};

const IMAGE: &str = "ferry-busybox";

/// dockerd in the world's host namespace, finding ferryd's plugin socket.
fn engine(world: &World) -> Dockerd {
    engine_with(world, &[])
}

fn engine_with(world: &World, flags: &[&str]) -> Dockerd {
    let dockerd = Dockerd::start(
        &world.host_ns_path(),
        &world.dir.join("docker"),
        Some(&world.dir.join("plugins")),
        flags,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tar = busybox_tar(dockerd.dir());
    dockerd.ok(&["import", &tar.display().to_string(), IMAGE]);
    dockerd
}

/// The ferry network Docker's network `id` became.
fn ferry_network(id: &str) -> String {
    format!("docker-{}", &id[..12])
}

#[test]
fn docker_containers_run_on_ferrys_datapath() {
    let mut world = World::new();
    let docker = engine(&world);
    let id = docker.ok(&[
        "network",
        "create",
        "-d",
        "ferry",
        "--ipam-driver",
        "ferry",
        "--subnet",
        "10.91.9.0/24",
        "fnet",
    ]);
    let net = ferry_network(&id);
    assert!(
        world.ferry_ok(&["network", "ls", "-q"]).contains(&net),
        "no ferry network {net}"
    );
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "fnet",
        "-p",
        "18280:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let ip = docker.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.fnet.IPAddress}}",
        "web",
    ]);
    assert!(ip.starts_with("10.91.9."), "Docker shows {ip:?}");

    world.assert_busybox_published(18280);
    let base = format!("http://{HOST_UPLINK_IP}:18280");
    // Docker wrote no DNAT rule for it and started no docker-proxy.
    let rules = rulesets(&world.host_ns_path());
    assert!(!rules.contains("18280"), "a rule for the port:\n{rules}");
    let proxies = output(std::process::Command::new("pgrep").args(["-f", "docker-proxy.*18280"]));
    assert!(!proxies.status.success(), "a docker-proxy runs");

    // Masquerade out: the client sees the host's uplink address.
    let _outside = Background::spawn(world.in_client(
        "socat",
        &[
            "TCP-LISTEN:7000,fork,reuseaddr",
            "SYSTEM:echo out $SOCAT_PEERADDR",
        ],
    ));
    let mut got = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let out =
                output(&mut docker.docker(&["exec", "web", "nc", "-w", "2", CLIENT_IP, "7000"]));
            got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            !got.is_empty()
        }),
        "no answer from the client"
    );
    assert_eq!(got, format!("out {HOST_UPLINK_IP}"));

    // A ferry container on the same network, both ways.
    let c1 = world.run_with("c1", &["--network", &net], &["sleep", "infinity"]);
    let page = output(&mut in_netns(
        &c1.netns,
        "curl",
        &["-sS", "--max-time", "2", &format!("http://{ip}/")],
    ));
    assert_eq!(
        String::from_utf8_lossy(&page.stdout).trim(),
        "hello from busybox"
    );
    assert!(
        output(&mut docker.docker(&["exec", "web", "ping", "-c", "1", "-W", "2", &c1.ip]))
            .status
            .success(),
        "the Docker container cannot ping the ferry container"
    );
    // `docker port` is empty for plugin networks; ferry knows.
    let ports = world.ferry_ok(&["endpoint", "ls"]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:18280"), "{ports}");

    // ferryd restarts while the container serves: traffic goes on, the
    // endpoint is adopted and Docker can still remove it.
    world.stop_ferryd();
    assert_eq!(
        world.curl_eventually(&format!("{base}/")),
        "hello from busybox"
    );
    world.start_ferryd();
    assert_eq!(
        world.curl_eventually(&format!("{base}/")),
        "hello from busybox"
    );

    // stop takes the endpoint down, start makes a new one.
    docker.ok(&["stop", "-t", "1", "web"]);
    assert!(world.curl_from_client(&format!("{base}/")).is_none());
    docker.ok(&["start", "web"]);
    assert_eq!(
        world.curl_eventually(&format!("{base}/")),
        "hello from busybox"
    );
    docker.ok(&["rm", "-f", "web"]);
    world.ferry_ok(&["rm", "-f", "c1"]);
    let left = world.ferry_ok(&["endpoint", "ls", "--json"]);
    assert_eq!(left.trim(), "[]", "endpoints left");
    docker.ok(&["network", "rm", "fnet"]);
    assert!(
        !world.ferry_ok(&["network", "ls", "-q"]).contains(&net),
        "the ferry network stayed"
    );
}

#[test]
fn docker_ip_conflicts_and_connect_leave_nothing() {
    let world = World::new();
    let docker = engine(&world);
    world.ferry_ok(&[
        "run", "-d", "--name", "holder", "-p", "18281:80", "--", "sleep", "infinity",
    ]);
    docker.ok(&[
        "network",
        "create",
        "-d",
        "ferry",
        "--ipam-driver",
        "ferry",
        "--subnet",
        "10.91.10.0/24",
        "one",
    ]);
    docker.ok(&[
        "network",
        "create",
        "-d",
        "ferry",
        "--ipam-driver",
        "ferry",
        "two",
    ]);
    let before = world.footprint();

    docker.ok(&[
        "run",
        "-d",
        "--name",
        "fixed",
        "--network",
        "one",
        "--ip",
        "10.91.10.50",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let ip = docker.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.one.IPAddress}}",
        "fixed",
    ]);
    assert_eq!(ip, "10.91.10.50");
    // connect/disconnect: a second interface on the second network.
    docker.ok(&["network", "connect", "two", "fixed"]);
    let links = docker.ok(&["exec", "fixed", "ip", "-o", "-4", "addr"]);
    assert!(links.contains("eth1"), "{links}");
    docker.ok(&["network", "disconnect", "two", "fixed"]);
    docker.ok(&["rm", "-f", "fixed"]);

    // A port ferry's own container publishes: Docker's error says whose.
    let clash = output(&mut docker.docker(&[
        "run",
        "-d",
        "--name",
        "clash",
        "--network",
        "one",
        "-p",
        "18281:80",
        IMAGE,
        "sleep",
        "1000",
    ]));
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(!clash.status.success(), "Docker ran on a taken port");
    assert!(
        err.contains("port 18281 is already published by container holder"),
        "{err}"
    );
    let _ = docker.docker(&["rm", "-f", "clash"]).output();
    assert!(
        wait_until(Duration::from_secs(5), || world.footprint() == before),
        "left behind: {:?}\nvs {:?}",
        world.footprint(),
        before
    );
}

#[test]
fn docker_live_restore_keeps_ferry_endpoints_serving() {
    let world = World::new();
    let mut docker = engine_with(&world, &["--live-restore"]);
    docker.ok(&[
        "network",
        "create",
        "-d",
        "ferry",
        "--ipam-driver",
        "ferry",
        "live",
    ]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "live",
        "-p",
        "18290:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let url = format!("http://{HOST_UPLINK_IP}:18290/");
    assert_eq!(world.curl_eventually(&url), "hello from busybox");
    // dockerd restarts; Docker replays nothing to the plugin, the
    // container and its endpoint stay.
    docker.restart().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Running}}", "web"]),
        "true"
    );
    assert_eq!(world.curl_eventually(&url), "hello from busybox");
    assert!(world.ferry_ok(&["endpoint", "ls"]).contains("18290"));
    docker.ok(&["rm", "-f", "web"]);
    assert_eq!(world.ferry_ok(&["endpoint", "ls", "--json"]).trim(), "[]");
}
