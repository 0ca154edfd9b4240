//! start: how long `ferry run -d` takes to hand back a running container
//! whose network answers, and how long `ferry rm -f` takes. ferry only: the
//! Docker datapath rebuilt here is a set of `ip` and `iptables` commands,
//! not a container runtime, so timing it would say nothing about Docker.

use std::time::Instant;

use ferry_integration::{World, ping};
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

pub fn run(args: &BenchArgs) -> anyhow::Result<Section> {
    let count = (args.reps * 20).max(1);
    step(&format!("bench start: {count} containers, one at a time"));
    let world = World::new();
    let (mut started, mut ready, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    let mut raw = Vec::new();
    for i in 0..count {
        let name = format!("start{i}");
        let t0 = Instant::now();
        world.ferry_ok(&["run", "-d", "--name", &name, "--", "sleep", "infinity"]);
        let run_ms = t0.elapsed().as_secs_f64() * 1000.0;
        // The address is looked up outside the clock; the first ping reply
        // then proves the network answers.
        let ip = world.container(&name).ip;
        let t1 = Instant::now();
        let answered = ping(&world.host_ns_path(), &ip, 1, &["-W", "1"]);
        anyhow::ensure!(answered, "{name} at {ip} did not answer a ping");
        let ready_ms = run_ms + t1.elapsed().as_secs_f64() * 1000.0;
        let t2 = Instant::now();
        world.ferry_ok(&["rm", "-f", &name]);
        let rm_ms = t2.elapsed().as_secs_f64() * 1000.0;
        started.push(run_ms);
        ready.push(ready_ms);
        removed.push(rm_ms);
        raw.push(json!({ "i": i, "run_ms": run_ms, "ready_ms": ready_ms, "rm_ms": rm_ms }));
    }
    let mut table = Table::new(
        format!("start: {count} containers (sleep infinity), one at a time"),
        &["step", "p50 ms", "p99 ms", "max ms"],
    );
    let mut groups = Vec::new();
    for (label, samples) in [
        ("ferry run -d returns", &started),
        ("network answers", &ready),
        ("ferry rm -f", &removed),
    ] {
        let (p50, p99, max) = (
            quantile(samples, 0.5),
            quantile(samples, 0.99),
            quantile(samples, 1.0),
        );
        table.row(vec![
            label.to_owned(),
            format!("{p50:.1}"),
            format!("{p99:.1}"),
            format!("{max:.1}"),
        ]);
        groups.push((
            label.to_owned(),
            vec![("p50".to_owned(), p50), ("p99".to_owned(), p99)],
        ));
    }
    Ok(Section {
        scenario: "start".into(),
        method: format!(
            "{count} containers started one after another with `ferry run -d -- sleep \
             infinity` (new namespaces, cgroups, overlay root, veth, datapath entries), each \
             pinged from the host until it answers, then removed with `ferry rm -f`. \
             \"network answers\" adds the first ping round trip (the address lookup between \
             is not counted). ferry only; see the scenario's source for why."
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
