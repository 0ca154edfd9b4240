//! podman-http: what a podman user gets by switching one network to
//! ferry's CNI plugin. The same podman (Debian's 4.3, CNI backend, runc),
//! the same image (the host's nginx, as the Docker engine bench imports it)
//! and command, published with `-p 8080:80`: on podman's default network
//! made of Debian's CNI plugins (bridge, portmap's iptables DNAT,
//! firewall), and on a ferry network (`ferry cni install`). Each podman
//! runs in a namespace of its own, so its bridge, rules and host-port
//! reservations stay there.

use std::path::Path;

use anyhow::Context as _;
use ferry_integration::{TempNetns, World, podman::Podman, unique_name};

use super::{
    BenchArgs,
    engine::nginx_image_tar,
    http::{Target, client_of, docroot, ferry_url, host_target, nginx_conf, run_targets},
    report::Section,
};
use crate::step;

const IMAGE: &str = "localhost/ferry-bench-nginx";

/// `podman run -d [--network NET] -p 8080:80 -v <out_dir>:<out_dir> IMAGE
/// taskset -c 0 nginx -c <conf>`, the image imported first.
fn run_nginx(
    podman: &Podman,
    out_dir: &Path,
    image_dir: &Path,
    network: Option<&str>,
    conf: &Path,
) -> anyhow::Result<()> {
    podman.import(&nginx_image_tar(image_dir)?, IMAGE);
    let dir = out_dir.to_str().context("utf-8 path")?;
    let volume = format!("{dir}:{dir}");
    let conf = conf.to_str().context("utf-8 path")?;
    let mut args = vec!["run", "-d", "-p", "8080:80", "-v", &volume];
    if let Some(network) = network {
        args.extend(["--network", network]);
    }
    args.extend([IMAGE, "taskset", "-c", "0", "nginx", "-c", conf]);
    podman.ok(&args);
    Ok(())
}

/// nginx behind podman's default network of Debian's plugins.
fn bridge_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let host = TempNetns::new(&unique_name("fyp"));
    let client = client_of(&host, "10.209.0");
    let dir = out_dir.join(unique_name("podman-bridge"));
    let podman = Podman::with_debian_bridge(&dir, &host.path());
    let conf = nginx_conf(out_dir, "podman-bridge", 80, root)?;
    run_nginx(&podman, out_dir, &dir, None, &conf)?;
    let base = Target::at(
        "podman-bridge",
        client.path(),
        "http://10.209.0.1:8080/".into(),
    );
    Ok(Target {
        _podman: Some(podman),
        _netns: vec![client, host],
        ..base
    })
}

/// nginx behind the same podman on a ferry network.
fn ferry_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let world = World::with_ferryd_args(&["--xdp-prefilter", "auto"]);
    let podman = Podman::beside(&world, "ferrynet", "bridge");
    let conf = nginx_conf(out_dir, "podman-ferry", 80, root)?;
    let dir = world.dir.join("podman");
    run_nginx(&podman, out_dir, &dir, Some("ferrynet"), &conf)?;
    let base = Target::at("podman-ferry", world.client_ns_path(), ferry_url());
    Ok(Target {
        _podman: Some(podman),
        _world: Some(world),
        ..base
    })
}

pub fn run(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    step("bench podman-http: podman on Debian's bridge and portmap plugins, and on ferry");
    let root = docroot(out_dir)?;
    let targets = vec![
        host_target(out_dir, &root)?,
        bridge_target(out_dir, &root)?,
        ferry_target(out_dir, &root)?,
    ];
    let method = format!(
        "nginx (Debian's, one worker on CPU 0) serving one 560-byte page, wrk -t1 on CPU 1 from \
         a client namespace (the outside): host = nginx in a plain namespace over a veth (the \
         limit); podman-bridge = Debian's podman 4.3 (CNI backend, runc, vfs storage) running \
         `podman run -p 8080:80` of an image imported from the host's nginx, docroot \
         bind-mounted, on its default network of Debian's CNI plugins (bridge, portmap, \
         firewall, tuning) in a namespace of its own; podman-ferry = the same podman, image and \
         command on a network of ferry's CNI plugin (`ferry cni install`, tc only). {} rounds \
         of {} s per cell, keep-alive and Connection: close.",
        args.reps, args.seconds
    );
    run_targets(
        "podman-http",
        method,
        &targets,
        &["host", "podman-bridge"],
        args,
    )
}
