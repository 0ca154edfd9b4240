//! HTTP through published ports, wrk against nginx, side by side.
//!
//! publish-http, from a client namespace (the outside):
//! - host: nginx in a plain namespace, reached over a veth (the limit);
//! - ferry: nginx in a ferry container with `-p 8080:80`;
//! - ferry-macvlan: the same on a macvlan network of the uplink (no veth);
//! - veth-routed: nginx behind a plain veth, kernel forwarding, no NAT and
//!   no program (what crossing a veth costs by itself);
//! - macvlan: nginx behind a macvlan slave of the uplink, addressed
//!   directly (what crossing a macvlan costs by itself);
//! - docker: nginx in a namespace on a bridge behind Docker's iptables DNAT
//!   (see `docker.rs`).
//!
//! local-http, from the host itself, to one ferry container:
//! - direct: to the container's address (the limit);
//! - ferry: `localhost:8080`, translated at connect time by the socket hooks;
//! - docker-proxy: `localhost:8081` through Docker's userland proxy.
//!
//! Every nginx serves the same file from the same filesystem (containers
//! share the host's), one worker pinned to CPU 0; wrk runs on CPU 1, with
//! keep-alive and with one connection per request.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use ferry_integration::{Background, TempNetns, World, unique_name, wait_until};
use serde_json::{Value, json};

use super::{
    BenchArgs, bench_cmd,
    docker::DockerBridge,
    engine::DockerEngine,
    report::{Chart, Section, Table},
    spawn, spawn_in, spread, tools,
};
use crate::{capture, step};

const CONNECTIONS: [u32; 3] = [1, 50, 200];

/// (Connection: close?, connections, variant).
type Cell = (bool, u32, &'static str);

/// The samples of one cell of the table.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

pub(super) struct Target {
    pub(super) name: &'static str,
    pub(super) client_ns: PathBuf,
    /// cgroup2 directory wrk runs in (where ferry's socket hooks act).
    pub(super) cgroup: Option<PathBuf>,
    pub(super) url: String,
    pub(super) _servers: Vec<Background>,
    /// Dropped first (fields drop in order): its containers go while the
    /// world's ferryd, their network plugin, still answers.
    pub(super) _engine: Option<DockerEngine>,
    /// Dropped before the world too: removing its containers asks
    /// ferry's CNI plugin, which asks ferryd.
    pub(super) _podman: Option<ferry_integration::podman::Podman>,
    pub(super) _world: Option<World>,
    pub(super) _netns: Vec<TempNetns>,
}

impl Target {
    /// Variant `name`, measured from `client_ns` at `url`, holding
    /// nothing; the guards it needs are set over it.
    pub(super) fn at(name: &'static str, client_ns: PathBuf, url: String) -> Self {
        Self {
            name,
            client_ns,
            cgroup: None,
            url,
            _servers: Vec::new(),
            _engine: None,
            _podman: None,
            _world: None,
            _netns: Vec::new(),
        }
    }
}

/// Where a world's published port 8080 answers its client.
pub(super) fn ferry_url() -> String {
    format!("http://{}:8080/", ferry_integration::HOST_UPLINK_IP)
}

/// The docroot every variant serves: one small page.
pub(super) fn docroot(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let root = out_dir.join("www");
    std::fs::create_dir_all(&root)?;
    let page = format!(
        "<!doctype html><title>ferry</title><p>{}</p>\n",
        "x".repeat(512)
    );
    std::fs::write(root.join("index.html"), page)?;
    Ok(root)
}

/// An nginx config: one worker, no access log, the shared docroot, open
/// files cached. The cache keeps the file system out of a network
/// benchmark: without it every request walks the docroot's path, and a
/// container's walk crosses its overlay root (a few % of a request here),
/// which no other variant pays.
pub(super) fn nginx_conf(
    out_dir: &Path,
    name: &str,
    port: u16,
    root: &Path,
) -> anyhow::Result<PathBuf> {
    let dir = out_dir.join("nginx").join(name);
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  open_file_cache max=64;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{ listen {port}; location / {{ root {}; }} }}\n}}\n",
        root.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// nginx in a ferry container on CPU 0, publishing port 80 as 8080. The
/// bench directory (config, docroot) is bind-mounted, so nginx serves the
/// same file from the same filesystem as in every other variant, not
/// through the container's overlay root.
pub(super) fn run_nginx(world: &World, out_dir: &Path, conf: &str) -> anyhow::Result<()> {
    run_nginx_on(world, out_dir, conf, None)
}

/// `run_nginx` on network `network` (else the default one).
fn run_nginx_on(
    world: &World,
    out_dir: &Path,
    conf: &str,
    network: Option<&str>,
) -> anyhow::Result<()> {
    let dir = out_dir.to_str().context("utf-8 path")?;
    let volume = format!("{dir}:{dir}");
    let mut args = vec![
        "run", "-d", "--name", "nginx", "-p", "8080:80", "-v", &volume,
    ];
    if let Some(network) = network {
        args.extend(["--network", network]);
    }
    args.extend(["--", "taskset", "-c", "0", "nginx", "-c", conf]);
    world.ferry_ok(&args);
    Ok(())
}

/// A client namespace joined to `host` by a veth: `<prefix>.1` on the host
/// side, `<prefix>.2` in the client.
pub(super) fn client_of(host: &TempNetns, prefix: &str) -> TempNetns {
    joined(host, "cl", "uplink0", prefix)
}

/// A new namespace `<host>-<suffix>` joined to `host` by a veth:
/// `host_if` with `<prefix>.1/24` on the host side, `eth0` with
/// `<prefix>.2/24` in the new one.
fn joined(host: &TempNetns, suffix: &str, host_if: &str, prefix: &str) -> TempNetns {
    let ns = TempNetns::new(&format!("{}-{suffix}", host.name));
    host.ip(&[
        "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    host.ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", host_if]);
    ns.ip(&["addr", "add", &format!("{prefix}.2/24"), "dev", "eth0"]);
    host.ip(&["link", "set", host_if, "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns
}

/// nginx (config `name`, listening on `port`) in the namespace at `ns`,
/// on CPU 0.
fn nginx_in(
    out_dir: &Path,
    root: &Path,
    name: &str,
    ns: &Path,
    port: u16,
) -> anyhow::Result<Background> {
    let conf = nginx_conf(out_dir, name, port, root)?;
    let conf = conf.to_str().context("utf-8 path")?;
    Ok(spawn_in(ns, 0, "nginx", &["-c", conf]))
}

pub(super) fn host_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let host = TempNetns::new(&unique_name("fyh"));
    let client = client_of(&host, "10.202.0");
    let nginx = nginx_in(out_dir, root, "host", &host.path(), 8080)?;
    let base = Target::at("host", client.path(), "http://10.202.0.1:8080/".into());
    Ok(Target {
        _servers: vec![nginx],
        _netns: vec![client, host],
        ..base
    })
}

/// nginx in a ferry container; `xdp` is ferryd's `--xdp-prefilter`
/// (`auto` leaves it off on this veth uplink).
pub(super) fn ferry_target(
    out_dir: &Path,
    root: &Path,
    name: &'static str,
    xdp: &str,
) -> anyhow::Result<Target> {
    let world = World::with_ferryd_args(&["--xdp-prefilter", xdp]);
    let conf = nginx_conf(out_dir, name, 80, root)?;
    let conf = conf.to_str().context("utf-8 path")?;
    run_nginx(&world, out_dir, conf)?;
    let base = Target::at(name, world.client_ns_path(), ferry_url());
    Ok(Target {
        _world: Some(world),
        ..base
    })
}

/// nginx in a ferry container on a macvlan network of the uplink: the
/// same published port, translated on the uplink itself, no veth.
pub(super) fn macvlan_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let world = World::with_ferryd_args(&["--xdp-prefilter", "auto"]);
    world.ferry_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=uplink0",
        "mvnet",
    ]);
    let conf = nginx_conf(out_dir, "ferry-macvlan", 80, root)?;
    let conf = conf.to_str().context("utf-8 path")?;
    run_nginx_on(&world, out_dir, conf, Some("mvnet"))?;
    let base = Target::at("ferry-macvlan", world.client_ns_path(), ferry_url());
    Ok(Target {
        _world: Some(world),
        ..base
    })
}

fn docker_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let bridge = DockerBridge::new("172.30.0", 1)?;
    let client = client_of(&bridge.host, "10.203.0");
    bridge.publish(&[(8080, 0, 80)])?;
    let nginx = nginx_in(out_dir, root, "docker", &bridge.containers[0].path(), 80)?;
    let DockerBridge {
        host, containers, ..
    } = bridge;
    let mut netns = vec![client];
    netns.extend(containers);
    netns.push(host);
    let base = Target::at("docker", netns[0].path(), "http://10.203.0.1:8080/".into());
    Ok(Target {
        _servers: vec![nginx],
        _netns: netns,
        ..base
    })
}

/// nginx in a namespace behind a plain veth, reached by the kernel's own
/// forwarding: no NAT, no bridge, no program, the client addresses the
/// server directly. The cost of crossing into a namespace over a veth and
/// nothing else: the floor under any datapath built on veths.
fn routed_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let host = TempNetns::new(&unique_name("fyr"));
    let client = client_of(&host, "10.207.0");
    let server = joined(&host, "s", "veth0", "172.28.0");
    server.ip(&["route", "add", "default", "via", "172.28.0.1"]);
    client.ip(&["route", "add", "172.28.0.0/24", "via", "10.207.0.1"]);
    capture(&mut host.cmd("sysctl", &["-qw", "net.ipv4.ip_forward=1"]))?;
    let nginx = nginx_in(out_dir, root, "veth-routed", &server.path(), 80)?;
    let base = Target::at("veth-routed", client.path(), "http://172.28.0.2:80/".into());
    Ok(Target {
        _servers: vec![nginx],
        _netns: vec![client, server, host],
        ..base
    })
}

/// nginx in a namespace behind a macvlan slave of the uplink, on the
/// client's own subnet, reached directly on L2: no NAT, no program, no
/// veth (what a macvlan crossing costs by itself).
fn macvlan_plain_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let host = TempNetns::new(&unique_name("fym"));
    let client = client_of(&host, "10.208.0");
    let server = TempNetns::new(&format!("{}-s", host.name));
    host.ip(&[
        "link", "add", "link", "uplink0", "name", "mv0", "type", "macvlan", "mode", "private",
    ]);
    host.ip(&["link", "set", "mv0", "netns", &server.name]);
    server.ip(&["addr", "add", "10.208.0.3/24", "dev", "mv0"]);
    server.ip(&["link", "set", "mv0", "up"]);
    server.ip(&["link", "set", "lo", "up"]);
    let nginx = nginx_in(out_dir, root, "macvlan", &server.path(), 80)?;
    let base = Target::at("macvlan", client.path(), "http://10.208.0.3:80/".into());
    Ok(Target {
        _servers: vec![nginx],
        _netns: vec![client, server, host],
        ..base
    })
}

/// nginx behind a real Docker engine: `docker run -p 8080:80`.
fn engine_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let engine = DockerEngine::start(out_dir)?;
    let host = engine
        .host
        .as_ref()
        .context("the engine has its own namespace")?;
    let client = client_of(host, "10.204.0");
    let conf = nginx_conf(out_dir, "docker-engine", 80, root)?;
    let conf = conf.to_str().context("utf-8 path")?;
    engine.run_nginx(out_dir, "8080:80", conf)?;
    let base = Target::at(
        "docker-engine",
        client.path(),
        "http://10.204.0.1:8080/".into(),
    );
    Ok(Target {
        _netns: vec![client],
        _engine: Some(engine),
        ..base
    })
}

/// nginx behind the same Docker engine on a ferry network: what a Docker
/// user gets by adding `--network` with ferry's plugin. dockerd runs in the
/// world's host namespace, beside ferryd, and finds its plugin socket.
fn engine_ferry_target(out_dir: &Path, root: &Path) -> anyhow::Result<Target> {
    let world = World::with_ferryd_args(&["--xdp-prefilter", "auto"]);
    let engine = DockerEngine::start_in(&world, out_dir)?;
    engine.network_create("fnet")?;
    let conf = nginx_conf(out_dir, "docker-engine-ferry", 80, root)?;
    let conf = conf.to_str().context("utf-8 path")?;
    engine.run_nginx_on(out_dir, Some("fnet"), "8080:80", conf)?;
    let base = Target::at("docker-engine-ferry", world.client_ns_path(), ferry_url());
    Ok(Target {
        _engine: Some(engine),
        _world: Some(world),
        ..base
    })
}

/// Requests/s and latency percentiles (ms) from wrk's `--latency` output.
fn parse_wrk(out: &str) -> anyhow::Result<Value> {
    let mut rps = None;
    let mut pct = BTreeMap::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        }
        for p in ["50%", "99%"] {
            if let Some(v) = line.strip_prefix(p) {
                pct.insert(p, to_ms(v.trim()));
            }
        }
    }
    let errors = out
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let Some(rps) = rps else {
        bail!("wrk printed no Requests/sec:\n{out}")
    };
    Ok(json!({ "rps": rps, "p50_ms": pct.get("50%"), "p99_ms": pct.get("99%"), "errors": errors }))
}

fn to_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

pub(super) fn wrk(
    t: &Target,
    connections: u32,
    close: bool,
    seconds: u32,
) -> anyhow::Result<Value> {
    let (c, d) = (format!("-c{connections}"), format!("-d{seconds}s"));
    let mut args = vec!["-t1", c.as_str(), d.as_str(), "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&t.url);
    parse_wrk(&capture(&mut bench_cmd(
        &t.client_ns,
        Some(1),
        t.cgroup.as_deref(),
        "wrk",
        &args,
    ))?)
}

pub fn publish(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    step("bench publish-http: host, ferry and Docker-datapath nginx");
    let root = docroot(out_dir)?;
    type Make = fn(&Path, &Path) -> anyhow::Result<Target>;
    let all: [(&str, Make); 9] = [
        ("host", host_target),
        ("ferry", |o, r| ferry_target(o, r, "ferry", "auto")),
        ("ferry-xdp", |o, r| ferry_target(o, r, "ferry-xdp", "on")),
        ("ferry-macvlan", macvlan_target),
        ("veth-routed", routed_target),
        ("macvlan", macvlan_plain_target),
        ("docker", docker_target),
        ("docker-engine", engine_target),
        ("docker-engine-ferry", engine_ferry_target),
    ];
    let chosen = crate::select(&args.variants, &all.map(|(name, _)| name), "variant")?;
    let mut targets = Vec::new();
    for (name, make) in all {
        if chosen.contains(&name) {
            targets.push(make(out_dir, &root)?);
        }
    }
    let method = format!(
        "nginx (Debian's, one worker on CPU 0) serving one 560-byte page, wrk -t1 on CPU 1 from \
         a client namespace (the outside): host = nginx in a plain namespace over a veth (the \
         limit); ferry = nginx in a ferry container published with -p 8080:80, docroot \
         bind-mounted, tc only (the default on a veth uplink); ferry-xdp = the same with the \
         XDP prefilter on the uplink; ferry-macvlan = the ferry container on a macvlan network \
         of the uplink (`network create -d macvlan -o parent=uplink0`: no veth, the same \
         published port translated on the uplink); veth-routed = nginx in a namespace behind a plain veth \
         reached by kernel forwarding, no NAT, no bridge, no program (the cost of the veth \
         crossing alone); macvlan = nginx in a namespace behind a macvlan slave of the uplink \
         on the client's subnet, reached directly, no NAT, no program (the macvlan crossing \
         alone); docker = nginx in a namespace on a bridge behind Docker's iptables \
         DNAT/MASQUERADE/filter rules; docker-engine = Debian's dockerd 20.10 (own namespaces, \
         overlay2, cgroupfs) running `docker run -p 8080:80` of an image imported from the host's \
         nginx, docroot bind-mounted, its docker-proxy running as by default; docker-engine-ferry = the same dockerd, image and \
         command on a network made with `docker network create -d ferry --ipam-driver ferry` \
         (ferryd as its network plugin, tc only). {} rounds of {} s per cell, keep-alive and \
         Connection: close.",
        args.reps, args.seconds
    );
    let baselines: Vec<&'static str> = ["host", "docker-engine", "veth-routed"]
        .into_iter()
        .filter(|b| targets.iter().any(|t| t.name == *b))
        .collect();
    run_targets("publish-http", method, &targets, &baselines, args)
}

/// The demo's short side-by-side: nginx through the host network, ferry
/// and Docker's datapath, `seconds` of keep-alive with 50 connections each;
/// (variant, req/s).
pub fn quick_compare(out_dir: &Path, seconds: u32) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let root = docroot(out_dir)?;
    let targets = [
        host_target(out_dir, &root)?,
        ferry_target(out_dir, &root, "ferry", "auto")?,
        docker_target(out_dir, &root)?,
    ];
    let mut out = Vec::new();
    for t in &targets {
        // A short warm-up so that no variant pays for the first connections.
        wrk(t, 50, false, 1)?;
        let v = wrk(t, 50, false, seconds)?;
        out.push((t.name, v["rps"].as_f64().unwrap_or(0.0)));
    }
    Ok(out)
}

pub fn local(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    step("bench local-http: direct, ferry localhost and docker-proxy to one container");
    let proxy = tools::docker_proxy()?;
    let root = docroot(out_dir)?;
    let world = World::new();
    let conf = nginx_conf(out_dir, "local", 80, &root)?;
    let conf = conf.to_str().context("utf-8 path")?;
    run_nginx(&world, out_dir, conf)?;
    let c = world.container("nginx");
    let host = world.host_ns_path();
    let proxy = proxy.to_str().context("utf-8 path")?;
    let mut cmd = bench_cmd(
        &host,
        None,
        None,
        proxy,
        &[
            "-proto",
            "tcp",
            "-host-ip",
            "127.0.0.1",
            "-host-port",
            "8081",
            "-container-ip",
            &c.ip,
            "-container-port",
            "80",
        ],
    );
    let status = tools::with_status_pipe(&mut cmd)?;
    let docker_proxy = spawn(cmd);
    tools::await_status(status)?;
    let target = |name, url: String| Target {
        cgroup: Some(world.cgroup.clone()),
        ..Target::at(name, host.clone(), url)
    };
    let targets = vec![
        target("direct", format!("http://{}:80/", c.ip)),
        target("ferry", "http://127.0.0.1:8080/".into()),
        target("docker-proxy", "http://127.0.0.1:8081/".into()),
    ];
    let method = format!(
        "The same nginx in one ferry container, loaded from the host itself: direct = to the \
         container's address (the limit); ferry = localhost:8080, translated at connect time \
         by the cgroup socket hooks; docker-proxy = localhost:8081 through Docker's userland \
         proxy (the real binary from Debian's docker.io). {} rounds of {} s per cell.",
        args.reps, args.seconds
    );
    let result = run_targets(
        "local-http",
        method,
        &targets,
        &["direct", "docker-proxy"],
        args,
    );
    drop(docker_proxy);
    result
}

/// Runs every target, interleaved, and prints medians with ratios to the
/// `baselines`.
pub(super) fn run_targets(
    scenario: &str,
    method: String,
    targets: &[Target],
    baselines: &[&'static str],
    args: &BenchArgs,
) -> anyhow::Result<Section> {
    for t in targets {
        let ready = wait_until(Duration::from_secs(10), || {
            bench_cmd(
                &t.client_ns,
                None,
                t.cgroup.as_deref(),
                "curl",
                &["-sf", "--max-time", "1", "-o", "/dev/null", &t.url],
            )
            .status()
            .is_ok_and(|s| s.success())
        });
        anyhow::ensure!(ready, "{}: nginx does not answer at {}", t.name, t.url);
    }

    let mut cells: BTreeMap<Cell, Samples> = BTreeMap::new();
    let mut raw = Vec::new();
    for rep in 1..=args.reps {
        for close in [false, true] {
            for &conns in &CONNECTIONS {
                for t in targets {
                    let mode = if close { "close" } else { "keep-alive" };
                    step(&format!(
                        "bench {scenario}: round {rep}/{}: {} {mode} c={conns}",
                        args.reps, t.name
                    ));
                    let r = wrk(t, conns, close, args.seconds)?;
                    let cell = cells.entry((close, conns, t.name)).or_default();
                    cell.rps.push(r["rps"].as_f64().unwrap_or(0.0));
                    cell.p50.push(r["p50_ms"].as_f64().unwrap_or(0.0));
                    cell.p99.push(r["p99_ms"].as_f64().unwrap_or(0.0));
                    raw.push(json!({
                        "variant": t.name, "mode": mode, "connections": conns, "round": rep, "wrk": r,
                    }));
                }
            }
        }
    }

    let versus: Vec<String> = baselines.iter().map(|b| format!("vs {b}")).collect();
    let mut columns = vec![
        "mode",
        "conn",
        "variant",
        "req/s med [min-max]",
        "p50 ms",
        "p99 ms",
    ];
    columns.extend(versus.iter().map(String::as_str));
    let mut table = Table::new(
        format!(
            "{scenario}: {} rounds of {} s each (wrk -t1, nginx 1 worker)",
            args.reps, args.seconds
        ),
        &columns,
    );
    let empty = Samples::default();
    let mut rps_groups = Vec::new();
    let mut p99_groups = Vec::new();
    for close in [false, true] {
        let mode = if close { "close" } else { "keep-alive" };
        for &conns in &CONNECTIONS {
            let cell = |name: &'static str| cells.get(&(close, conns, name)).unwrap_or(&empty);
            let med = |name| spread(&cell(name).rps).0;
            let mut rps_bars = Vec::new();
            let mut p99_bars = Vec::new();
            for t in targets {
                let (m, lo, hi) = spread(&cell(t.name).rps);
                let p50 = spread(&cell(t.name).p50).0;
                let p99 = spread(&cell(t.name).p99).0;
                let mut row = vec![
                    mode.to_owned(),
                    conns.to_string(),
                    t.name.to_owned(),
                    format!("{m:.0} [{lo:.0}-{hi:.0}]"),
                    format!("{p50:.3}"),
                    format!("{p99:.3}"),
                ];
                row.extend(baselines.iter().map(|b| format!("{:.2}x", m / med(b))));
                table.row(row);
                rps_bars.push((t.name.to_owned(), m));
                p99_bars.push((t.name.to_owned(), p99));
            }
            let label = format!("{mode} c={conns}");
            rps_groups.push((label.clone(), rps_bars));
            p99_groups.push((label, p99_bars));
        }
    }
    Ok(Section {
        scenario: scenario.to_owned(),
        method,
        tables: vec![table],
        charts: vec![
            Chart {
                file: format!("{scenario}-rps"),
                title: format!("{scenario}: requests per second (median)"),
                unit: "req/s".into(),
                groups: rps_groups,
            },
            Chart {
                file: format!("{scenario}-p99"),
                title: format!("{scenario}: p99 latency (median of rounds)"),
                unit: "ms".into(),
                groups: p99_groups,
            },
        ],
        samples: json!(raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 1s test @ http://x/\n  Latency Distribution\n     50%  120.00us\n     75%    1.00ms\n     99%    2.50ms\n  1234 requests in 1.00s\nRequests/sec:   1234.56\nTransfer/sec:      1.00MB\n";
        let v = parse_wrk(out).expect("parse");
        assert_eq!(v["rps"], 1234.56);
        assert_eq!(v["p50_ms"], 0.12);
        assert_eq!(v["p99_ms"], 2.5);
        assert!(parse_wrk("garbage").is_err());
    }
}
