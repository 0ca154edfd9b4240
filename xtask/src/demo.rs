//! `cargo xtask demo`: ferry end to end in a sandbox, then cleaned up.
//!
//! Everything happens in throwaway namespaces (the test harness's `World`):
//! a "host" namespace where a ferryd of its own runs, and the containers it
//! creates. The machine's own interfaces are never touched.

use std::process::Command;

use ferry_integration::{World, in_netns, use_bin_dir};

use crate::{build, require_root, setup, step};

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

    step("demo: cleaning up (containers, ferryd, pins, namespaces)");
    drop(world);
    step("demo: done");
    Ok(())
}
