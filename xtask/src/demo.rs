//! `cargo xtask demo`: ferry end to end in a sandbox, then cleaned up.
//!
//! Everything happens in throwaway namespaces (the test harness's `World`):
//! a "host" namespace where a ferryd of its own runs, and the containers it
//! creates. The machine's own interfaces are never touched.

use std::process::Command;

use ferry_integration::{
    HOST_UPLINK_IP, World,
    image::{self, Layer},
    in_netns, use_bin_dir,
};
use serde_json::json;

use crate::{bench, build, require_root, setup, step};

fn show(title: &str, cmd: &mut Command) {
    println!("\n\x1b[36m$ {title}\x1b[0m");
    match cmd.output() {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Err(e) => println!("(cannot run: {e})"),
    }
}

fn ferry(world: &World, args: &[&str]) -> Command {
    let mut cmd = Command::new(build::bin_dir().join("ferry"));
    cmd.arg("-H").arg(&world.socket).args(args);
    cmd
}

pub fn run() -> anyhow::Result<()> {
    require_root("demo")?;
    setup::run()?;
    build::run()?;
    use_bin_dir(build::bin_dir());

    step("demo: a sandbox host namespace with its own ferryd");
    let world = World::new();
    println!(
        "host namespace {}, API socket {}, pins under {}",
        world.host.name,
        world.socket.display(),
        world.pin_dir.display()
    );

    step("demo: an image run with a published port (ferry's main job)");
    let layers = vec![
        Layer::new()
            .busybox(&["sh", "httpd", "cat", "echo"])
            .finish(),
        Layer::new()
            .dir("www")
            .file("www/index.html", 0o644, b"hello from a ferry container\n")
            .finish(),
    ];
    let config = image::config(
        &layers,
        json!({
            "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
            "Env": ["PATH=/bin"],
            "ExposedPorts": { "80/tcp": {} },
        }),
    );
    let archive = world.dir.join("site.tar");
    image::docker_archive(&archive, &["demo/site:1"], &layers, &config);
    let archive = archive.display().to_string();
    show(
        "ferry load -i site.tar   # a `docker save` archive built from the host's busybox",
        &mut ferry(&world, &["load", "-i", &archive]),
    );
    show("ferry images", &mut ferry(&world, &["images"]));
    show(
        "ferry run -d --name site -p 8080:80 demo/site:1",
        &mut ferry(
            &world,
            &[
                "run",
                "-d",
                "--name",
                "site",
                "-p",
                "8080:80",
                "demo/site:1",
            ],
        ),
    );
    let base = format!("http://{HOST_UPLINK_IP}:8080");
    world.curl_eventually(&format!("{base}/"));
    show(
        &format!("(in client) curl {base}/   # DNAT in eBPF on the uplink"),
        &mut in_netns(
            &world.client_ns_path(),
            "curl",
            &["-sS", &format!("{base}/")],
        ),
    );
    show(
        &format!(
            "(in client) curl {base}/cgi-bin/peer   # the container sees the client's own address"
        ),
        &mut in_netns(
            &world.client_ns_path(),
            "curl",
            &["-sS", &format!("{base}/cgi-bin/peer")],
        ),
    );
    show(
        "(on the host) curl http://127.0.0.1:8080/   # localhost:PORT, translated at connect()",
        &mut world.in_host("curl", &["-sS", "http://127.0.0.1:8080/"]),
    );
    show("ferry port site", &mut ferry(&world, &["port", "site"]));

    step("demo: two containers, created by ferryd");
    let web = world.run(
        "web",
        &[
            "socat",
            "TCP-LISTEN:8080,fork,reuseaddr",
            "SYSTEM:echo hello from $(hostname)",
        ],
    );
    let client = world.run("client", &["sleep", "infinity"]);
    show("ferry ps", &mut ferry(&world, &["ps"]));

    step("demo: client -> web, forwarded by bpf_redirect_peer (no bridge, no iptables)");
    show(
        &format!("(in client) ping -c 3 {}", web.ip),
        &mut in_netns(&client.netns, "ping", &["-c", "3", "-i", "0.2", &web.ip]),
    );
    let target = format!("TCP:{}:8080", web.ip);
    show(
        &format!("(in client) socat - {target}"),
        &mut in_netns(&client.netns, "socat", &["-T", "2", "-", &target]),
    );
    show(
        "ferry stats --no-stream",
        &mut ferry(&world, &["stats", "--no-stream"]),
    );

    step("demo: a spoofed source address is dropped and counted");
    let forged = "10.89.0.250";
    let _ = in_netns(
        &client.netns,
        "ip",
        &["addr", "add", &format!("{forged}/32"), "dev", "eth0"],
    )
    .status();
    show(
        &format!("(in client) ping -c 2 -I {forged} {}", web.ip),
        &mut in_netns(
            &client.netns,
            "ping",
            &["-c", "2", "-W", "1", "-I", forged, &web.ip],
        ),
    );
    show("ferry datapath", &mut ferry(&world, &["datapath"]));

    step("demo: the datapath through stock tools");
    show(
        &format!("(in host) tc filter show dev {} ingress", web.host_veth),
        &mut world.in_host("tc", &["filter", "show", "dev", &web.host_veth, "ingress"]),
    );
    show(
        "(in host) bpftool net show",
        &mut world.in_host("bpftool", &["net", "show"]),
    );
    let endpoints = world.pin_dir.join("endpoints");
    show(
        &format!("bpftool map dump pinned {}", endpoints.display()),
        Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&endpoints),
    );

    step("demo: the same request side by side: nginx, keep-alive, 50 connections, 3 s each");
    let compare = world.dir.join("compare");
    std::fs::create_dir_all(&compare)?;
    let results = bench::quick_compare(&compare, 3)?;
    let rps = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, r)| *r)
    };
    let (host, docker) = (rps("host"), rps("docker"));
    println!(
        "\n{:<44}{:>12}{:>10}{:>12}",
        "datapath", "req/s", "/ host", "/ docker"
    );
    for (name, label) in [
        ("host", "host network (the limit)"),
        ("ferry", "ferry (-p, eBPF)"),
        ("docker", "Docker's (bridge, iptables DNAT, conntrack)"),
    ] {
        let r = rps(name);
        let ratio = |base: f64| if base > 0.0 { r / base } else { 0.0 };
        println!(
            "{label:<44}{r:>12.0}{:>9.2}x{:>11.2}x",
            ratio(host),
            ratio(docker)
        );
    }
    println!(
        "(a few seconds on a shared machine: `cargo xtask bench publish-http` measures properly)"
    );

    step("demo: cleaning up (containers, ferryd, pins, namespaces)");
    drop(world);
    step("demo: done");
    Ok(())
}
