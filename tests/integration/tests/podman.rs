//! podman 4.3 (Debian's) with its CNI backend runs containers on ferry's
//! datapath through ferry-cni: published ports from outside and from the
//! host's localhost with the client's address, masquerade out, traffic
//! with ferry's own containers, stop/start/rm, `--ip`, a taken port as
//! podman's error with ferry's message, and no leak after many runs.

use std::time::Duration;

use ferry_integration::{
    Background, CLIENT_IP, HOST_UPLINK_IP, World, in_netns, output,
    podman::{IMAGE, Podman},
    wait_until,
};

/// The running endpoints' names, from `ferry endpoint ls --json`.
fn endpoints(world: &World) -> Vec<String> {
    let out = world.ferry_ok(&["endpoint", "ls", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("endpoint JSON");
    list.iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn podman_containers_run_on_ferrys_datapath() {
    let world = World::new();
    let podman = Podman::new(&world, "ferrynet", "bridge");
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/www"];
    let mut run = vec!["run", "-d", "--name", "web", "--network", "ferrynet"];
    run.extend(["-p", "18180:80", IMAGE]);
    run.extend(httpd);
    podman.ok(&run);

    // podman shows the address ferry gave (the result's sandbox interface).
    let ip = podman.inspect("web", "{{.NetworkSettings.Networks.ferrynet.IPAddress}}");
    assert!(ip.starts_with("10.89.0."), "podman shows {ip:?}");
    world.assert_busybox_published(18180);
    let base = format!("http://{HOST_UPLINK_IP}:18180");
    // Masquerade out: the client sees the host's uplink address.
    let _outside = Background::spawn(world.in_client(
        "socat",
        &[
            "TCP-LISTEN:7000,fork,reuseaddr",
            "SYSTEM:echo out $SOCAT_PEERADDR",
        ],
    ));
    let mut got = String::new();
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let out = podman.run(&["exec", "web", "nc", "-w", "2", CLIENT_IP, "7000"]);
            got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            !got.is_empty()
        }),
        "no answer from the client: {last}"
    );
    assert_eq!(got, format!("out {HOST_UPLINK_IP}"));
    // A ferry container on the same network, both ways.
    let c1 = world.run("c1", &["sleep", "infinity"]);
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
        podman
            .run(&["exec", "web", "ping", "-c", "1", "-W", "2", &c1.ip])
            .status
            .success(),
        "podman container cannot ping the ferry container"
    );

    // docker port / podman port come from the engine; ferry knows its own.
    assert_eq!(endpoints(&world), ["web"]);
    let ps = world.ferry_ok(&["ps"]);
    assert!(
        ps.contains("web") && ps.contains("cni") && ps.contains("80/tcp -> 0.0.0.0:18180"),
        "{ps}"
    );
    assert_eq!(
        world.ferry_ok(&["port", "web"]).trim(),
        "80/tcp -> 0.0.0.0:18180"
    );

    // stop takes the attachment down; start makes a new one.
    podman.ok(&["stop", "-t", "1", "web"]);
    assert!(endpoints(&world).is_empty(), "stop left the endpoint");
    assert!(world.curl_from_client(&format!("{base}/")).is_none());
    podman.ok(&["start", "web"]);
    assert_eq!(
        world.curl_eventually(&format!("{base}/")),
        "hello from busybox"
    );
    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(endpoints(&world).is_empty(), "rm left the endpoint");
    world.ferry_ok(&["rm", "-f", "c1"]);
}

#[test]
fn podman_ip_port_conflicts_and_many_runs_leave_nothing() {
    let world = World::new();
    world.ferry_ok(&["network", "create", "--subnet", "10.91.8.0/24", "pnet"]);
    let podman = Podman::new(&world, "ferrynet", "bridge");
    podman.add_network(&world, "pnet", "pnet");
    world.ferry_ok(&[
        "run", "-d", "--name", "holder", "-p", "18181:80", "--", "sleep", "infinity",
    ]);
    let before = world.footprint();

    podman.ok(&[
        "run",
        "-d",
        "--name",
        "fixed",
        "--network",
        "pnet",
        "--ip",
        "10.91.8.50",
        "-p",
        "18182:80",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_eq!(
        podman.inspect("fixed", "{{.NetworkSettings.Networks.pnet.IPAddress}}"),
        "10.91.8.50"
    );
    podman.ok(&["rm", "-f", "-t", "0", "fixed"]);

    // A port ferry's own container publishes: podman's error says whose.
    let clash = podman.run(&[
        "run",
        "-d",
        "--name",
        "clash",
        "--network",
        "ferrynet",
        "-p",
        "18181:80",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(!clash.status.success(), "podman ran on a taken port");
    assert!(
        err.contains("port 18181 is already published by container holder"),
        "{err}"
    );
    let _ = podman.run(&["rm", "-f", "-t", "0", "clash"]);
    assert_eq!(world.footprint(), before, "a refused run left something");

    for n in 0..100 {
        let out = podman.run(&[
            "run",
            "--rm",
            "--network",
            "ferrynet",
            "-p",
            "18183:80",
            IMAGE,
            "true",
        ]);
        assert!(
            out.status.success(),
            "run {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || world.footprint() == before),
        "100 runs left: {:?}\nvs {:?}",
        world.footprint(),
        before
    );
}
