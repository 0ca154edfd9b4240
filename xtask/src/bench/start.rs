//! start: how long `ferry run -d` takes to hand back a running container
//! whose network answers, and how long `ferry rm -f` takes. ferry only: the
//! Docker datapath rebuilt here is a set of `ip` and `iptables` commands,
//! not a container runtime, so timing it would say nothing about Docker.

use std::time::Instant;

use ferry_integration::{
    World,
    image::{self, Layer},
    ping,
};
use serde_json::json;

use super::{
    BenchArgs,
    report::{Chart, Section, Table},
};
use crate::step;

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

/// What the containers run: an overlay of the host's root, or an image of
/// the store (busybox in two layers, built by the tests' image code).
const VARIANTS: [(&str, &[&str]); 2] = [
    ("host root", &["--", "sleep", "infinity"]),
    ("image", &[IMAGE, "sleep", "infinity"]),
];
const IMAGE: &str = "bench-start:1";

fn load_image(world: &World) -> anyhow::Result<()> {
    let base = Layer::new().busybox(&["sh", "sleep"]).finish();
    let top = Layer::new()
        .dir("etc")
        .file("etc/motd", 0o644, b"bench\n")
        .finish();
    let layers = vec![base, top];
    let config = image::config(&layers, json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }));
    let archive = world.dir.join("bench-start.tar");
    image::docker_archive(&archive, &[IMAGE], &layers, &config);
    world.ferry_ok(&["load", "-q", "-i", &archive.display().to_string()]);
    Ok(())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<Section> {
    let count = (args.reps * 20).max(1);
    step(&format!(
        "bench start: {count} containers per variant (host root, image), one at a time"
    ));
    let world = World::new();
    load_image(&world)?;
    // Per variant: run, ready, rm samples.
    let mut samples: Vec<[Vec<f64>; 3]> = VARIANTS.iter().map(|_| Default::default()).collect();
    let mut raw = Vec::new();
    for i in 0..count {
        // Interleaved, so that drift over the run hits both alike.
        for (v, (variant, cmd)) in VARIANTS.iter().enumerate() {
            let name = format!("start{i}v{v}");
            let mut argv = vec!["run", "-d", "--name", &name];
            argv.extend_from_slice(cmd);
            let t0 = Instant::now();
            world.ferry_ok(&argv);
            let run_ms = t0.elapsed().as_secs_f64() * 1000.0;
            // The address is looked up outside the clock; the first ping
            // reply then proves the network answers.
            let ip = world.container(&name).ip;
            let t1 = Instant::now();
            let answered = ping(&world.host_ns_path(), &ip, 1, &["-W", "1"]);
            anyhow::ensure!(answered, "{name} at {ip} did not answer a ping");
            let ready_ms = run_ms + t1.elapsed().as_secs_f64() * 1000.0;
            let t2 = Instant::now();
            world.ferry_ok(&["rm", "-f", &name]);
            let rm_ms = t2.elapsed().as_secs_f64() * 1000.0;
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
        for (k, label) in ["ferry run -d returns", "network answers", "ferry rm -f"]
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
    Ok(Section {
        scenario: "start".into(),
        method: format!(
            "{count} containers per variant started one after another with `ferry run -d` \
             (new namespaces, cgroups, overlay root, veth, datapath entries), each pinged from \
             the host until it answers, then removed with `ferry rm -f`; the variants take \
             turns. \"host root\": `-- sleep infinity` on an overlay of the host's root; \
             \"image\": `{IMAGE} sleep infinity`, an image loaded beforehand (busybox in two \
             layers), its layers as the overlay's lower directories. \"network answers\" adds \
             the first ping round trip (the address lookup between is not counted). ferry only; \
             see the scenario's source for why."
        ),
        tables: vec![table],
        charts: vec![Chart {
            file: "start".into(),
            title: "start: container lifecycle latency".into(),
            unit: "ms".into(),
            groups,
        }],
        samples: json!(raw),
    })
}
