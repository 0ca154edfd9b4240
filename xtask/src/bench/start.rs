//! start: how long `ferry run -d` takes to hand back a running container
//! whose network answers, and how long `ferry rm -f` takes, beside Debian's
//! dockerd (containerd, runc) doing the same with the same image.

use std::{path::Path, time::Instant};

use ferry_integration::{
    World,
    image::{self, Layer},
    ping,
};
use serde_json::json;

use super::{
    BenchArgs,
    engine::DockerEngine,
    report::{Chart, Section, Table},
};
use crate::{capture, step};

/// Value at quantile `q` (0..=1) of `samples`, nearest rank.
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Who starts the containers, and what they run: ferry on an overlay of
/// the host's root or with an image of its store (busybox in two layers,
/// built by the tests' image code), and dockerd with the same image.
const VARIANTS: [(&str, Engine); 3] = [
    (
        "ferry, host root",
        Engine::Ferry(&["--", "sleep", "infinity"]),
    ),
    ("ferry, image", Engine::Ferry(&[IMAGE, "sleep", "infinity"])),
    ("docker, image", Engine::Docker),
];
const IMAGE: &str = "bench-start:1";

#[derive(Clone, Copy)]
enum Engine {
    /// `ferry run -d --name NAME` and these arguments.
    Ferry(&'static [&'static str]),
    /// `docker run -d --name NAME IMAGE sleep infinity`.
    Docker,
}

/// One container's milliseconds: run returned, network answered, removed.
fn lifecycle(
    world: &World,
    docker: &DockerEngine,
    engine: Engine,
    name: &str,
) -> anyhow::Result<[f64; 3]> {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let run = |args: &[&str]| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        match engine {
            Engine::Ferry(_) => {
                world.ferry_ok(args);
            }
            Engine::Docker => {
                capture(&mut docker.docker(args))?;
            }
        }
        Ok(ms(t0))
    };
    let (run_ms, ip, ns) = match engine {
        Engine::Ferry(cmd) => {
            let mut argv = vec!["run", "-d", "--name", name];
            argv.extend_from_slice(cmd);
            let run_ms = run(&argv)?;
            (run_ms, world.container(name).ip, world.host_ns_path())
        }
        Engine::Docker => {
            let run_ms = run(&["run", "-d", "--name", name, IMAGE, "sleep", "infinity"])?;
            let ip = capture(&mut docker.docker(&[
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}",
                name,
            ]))?;
            let ns = docker
                .host
                .as_ref()
                .map(|h| h.path())
                .ok_or_else(|| anyhow::anyhow!("dockerd has no namespace of its own"))?;
            (run_ms, ip.trim().to_owned(), ns)
        }
    };
    // The address is looked up outside the clock; the first ping reply
    // then proves the network answers.
    let t1 = Instant::now();
    let answered = ping(&ns, &ip, 1, &["-W", "1"]);
    anyhow::ensure!(answered, "{name} at {ip} did not answer a ping");
    let ready_ms = run_ms + ms(t1);
    let t2 = Instant::now();
    match engine {
        Engine::Ferry(_) => {
            world.ferry_ok(&["rm", "-f", name]);
        }
        Engine::Docker => {
            capture(&mut docker.docker(&["rm", "-f", name]))?;
        }
    }
    Ok([run_ms, ready_ms, ms(t2)])
}

/// The image, built once, loaded into ferry and into dockerd.
fn load_image(world: &World, docker: &DockerEngine) -> anyhow::Result<()> {
    let base = Layer::new().busybox(&["sh", "sleep"]).finish();
    let top = Layer::new()
        .dir("etc")
        .file("etc/motd", 0o644, b"bench\n")
        .finish();
    let layers = vec![base, top];
    let config = image::config(&layers, json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }));
    let archive = world.dir.join("bench-start.tar");
    image::docker_archive(&archive, &[IMAGE], &layers, &config);
    let archive = archive.display().to_string();
    world.ferry_ok(&["load", "-q", "-i", &archive]);
    capture(&mut docker.docker(&["load", "-q", "-i", &archive]))?;
    Ok(())
}

pub fn run(args: &BenchArgs, out_dir: &Path) -> anyhow::Result<Section> {
    let count = (args.reps * 20).max(1);
    step(&format!(
        "bench start: {count} containers per variant (ferry host root, ferry image, docker \
         image), one at a time"
    ));
    let world = World::new();
    let docker = DockerEngine::start(out_dir)?;
    load_image(&world, &docker)?;
    // Per variant: run, ready, rm samples.
    let mut samples: Vec<[Vec<f64>; 3]> = VARIANTS.iter().map(|_| Default::default()).collect();
    let mut raw = Vec::new();
    for i in 0..count {
        // Interleaved, so that drift over the run hits all alike.
        for (v, (variant, engine)) in VARIANTS.iter().enumerate() {
            let name = format!("start{i}v{v}");
            let [run_ms, ready_ms, rm_ms] = lifecycle(&world, &docker, *engine, &name)?;
            for (k, ms) in [run_ms, ready_ms, rm_ms].into_iter().enumerate() {
                samples[v][k].push(ms);
            }
            raw.push(json!({
                "i": i, "variant": variant, "run_ms": run_ms, "ready_ms": ready_ms, "rm_ms": rm_ms,
            }));
        }
    }
    let mut table = Table::new(
        format!("start: {count} containers per variant (sleep infinity), one at a time"),
        &["variant", "step", "p50 ms", "p99 ms", "max ms"],
    );
    let mut groups = Vec::new();
    for (v, (variant, _)) in VARIANTS.iter().enumerate() {
        for (k, label) in ["run -d returns", "network answers", "rm -f returns"]
            .into_iter()
            .enumerate()
        {
            let s = &samples[v][k];
            let (p50, p99, max) = (quantile(s, 0.5), quantile(s, 0.99), quantile(s, 1.0));
            table.row(vec![
                (*variant).to_owned(),
                label.to_owned(),
                format!("{p50:.1}"),
                format!("{p99:.1}"),
                format!("{max:.1}"),
            ]);
            groups.push((
                format!("{variant}: {label}"),
                vec![("p50".to_owned(), p50), ("p99".to_owned(), p99)],
            ));
        }
    }
    // How many times longer Docker takes than ferry with the same image.
    let mut ratios = Table::new(
        "start: docker / ferry with the same image, p50".to_owned(),
        &["step", "docker ms", "ferry ms", "docker / ferry"],
    );
    for (k, label) in ["run -d returns", "network answers", "rm -f returns"]
        .into_iter()
        .enumerate()
    {
        let (docker, ferry) = (quantile(&samples[2][k], 0.5), quantile(&samples[1][k], 0.5));
        ratios.row(vec![
            label.to_owned(),
            format!("{docker:.1}"),
            format!("{ferry:.1}"),
            format!("{:.1}x", docker / ferry.max(f64::EPSILON)),
        ]);
    }
    Ok(Section {
        scenario: "start".into(),
        method: format!(
            "{count} containers per variant started one after another with `run -d` (new \
             namespaces, cgroups, overlay root, veth, datapath entries or docker0 and \
             iptables), each pinged from its engine's host namespace until it answers, then \
             removed with `rm -f`; the variants take turns. \"ferry, host root\": `-- sleep \
             infinity` on an overlay of the host's root; \"ferry, image\": `{IMAGE} sleep \
             infinity`, an image loaded beforehand (busybox in two layers), its layers as the \
             overlay's lower directories; \"docker, image\": Debian's dockerd (containerd, \
             runc) in namespaces of its own, the same image archive loaded with `docker load`. \
             \"network answers\" adds the first ping round trip (the address lookup between is \
             not counted)."
        ),
        tables: vec![table, ratios],
        charts: vec![Chart {
            file: "start".into(),
            title: "start: container lifecycle latency".into(),
            unit: "ms".into(),
            groups,
        }],
        samples: json!(raw),
    })
}
