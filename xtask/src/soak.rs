//! `cargo xtask soak`: container churn with traffic, then a leak check.
//! Workers create, use and remove containers in parallel in a world of
//! their own (see tests/integration); each container serves HTTP on a
//! published port (DNAT, conntrack), fetches from the outside network
//! through `ferry exec` (masquerade, the exec path), and is removed with
//! `rm -f`. Afterwards the world's footprint (links, routes, map entries,
//! cgroups, state, mounts, pins) must equal the one before, ferryd's open
//! file descriptors too, and its memory must not have grown beyond the
//! allocator's noise. Unlike `bench`, this passes or fails.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use ferry_integration::{Background, CLIENT_IP, HOST_UPLINK_IP, World, use_bin_dir};
use serde_json::json;

use crate::{build, require_root, setup, step, workspace_root};

#[derive(Args)]
pub struct SoakArgs {
    /// Containers to create, use and remove.
    #[arg(long, default_value_t = 500)]
    pub containers: usize,
    /// Containers in flight at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Give up (and fail) after this many minutes.
    #[arg(long, default_value_t = 20)]
    pub minutes: u64,
}

/// Memory ferryd may gain over the run (after a warm-up round) before it
/// counts as growth: allocator and tokio noise, not per-container state.
const RSS_SLACK_KIB: u64 = 2048;

/// First host port; container i publishes BASE_PORT + i.
const BASE_PORT: usize = 20_000;

fn ferry(world: &World, args: &[&str]) -> anyhow::Result<String> {
    let out = world.ferry(args);
    ensure!(
        out.status.success(),
        "ferry {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// ferryd's resident memory (KiB) and open descriptors.
fn ferryd_usage(pid: u32) -> anyhow::Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("ferryd {pid} is gone"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

/// One container's life: run, answer over its published port, fetch from
/// outside, remove.
fn cycle(world: &World, i: usize) -> anyhow::Result<()> {
    let name = format!("soak{i}");
    let port = (BASE_PORT + i).to_string();
    ferry(
        world,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &format!("{port}:80"),
            "--",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        ],
    )?;
    let url = format!("http://{HOST_UPLINK_IP}:{port}/hostname");
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let out = ferry_integration::output(
            world
                .in_client("curl", &["-sf", "-m", "2", &url])
                .stdin(std::process::Stdio::null()),
        );
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        ensure!(Instant::now() < deadline, "{name}: nothing on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = ferry(world, &["inspect", "--format", "{{.Id}}", &name])?;
    ensure!(
        id.trim().starts_with(&served),
        "{name}: port {port} answered {served:?}, not its hostname"
    );
    let fetched = ferry(
        world,
        &[
            "exec",
            &name,
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{CLIENT_IP}:9000/hostname"),
        ],
    )?;
    ensure!(
        !fetched.trim().is_empty(),
        "{name}: empty answer from outside"
    );
    ferry(world, &["rm", "-f", &name])?;
    Ok(())
}

/// Runs `count` cycles starting at `first` on `parallel` workers; calls
/// `sample` after every `every` finished cycles.
fn churn(
    world: &World,
    first: usize,
    count: usize,
    parallel: usize,
    deadline: Instant,
    mut sample: impl FnMut(usize) -> anyhow::Result<()> + Send,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(first);
    let done = AtomicUsize::new(0);
    let sample = std::sync::Mutex::new(&mut sample);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= first + count {
                            return Ok(());
                        }
                        ensure!(
                            Instant::now() < deadline,
                            "time limit reached at container {i}"
                        );
                        cycle(world, i)?;
                        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                        if n.is_multiple_of(25) || n == count {
                            let mut f = sample
                                .lock()
                                .map_err(|_| anyhow::anyhow!("sampler poisoned"))?;
                            (*f)(n)?;
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?)
            .collect::<anyhow::Result<Vec<()>>>()
    })?;
    Ok(())
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    require_root("soak")?;
    setup::run()?;
    build::run()?;
    use_bin_dir(build::bin_dir());
    ensure!(
        BASE_PORT + args.containers < 61_000,
        "--containers {} would publish into the masquerade port range",
        args.containers
    );
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let world = World::new();
    let pid = world.ferryd_pid().context("ferryd is not running")?;
    let www = world.dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("hostname"), "outside\n")?;
    let _outside = Background::spawn(world.in_client(
        "busybox",
        &[
            "httpd",
            "-f",
            "-p",
            "9000",
            "-h",
            &www.display().to_string(),
        ],
    ));
    let before = world.footprint();
    let (_, fds_before) = ferryd_usage(pid)?;

    // A warm-up round settles the allocator, thread pools and caches.
    let warm = args.containers.min(25);
    step(&format!("soak: warm-up, {warm} containers"));
    churn(&world, 0, warm, args.parallel, deadline, |_| Ok(()))?;
    let (rss_warm, _) = ferryd_usage(pid)?;

    let count = args.containers;
    step(&format!(
        "soak: {count} containers, {} at a time (ferryd RSS after warm-up {rss_warm} KiB)",
        args.parallel
    ));
    let started = Instant::now();
    let mut samples = Vec::new();
    churn(&world, warm, count, args.parallel, deadline, |n| {
        let (rss, fds) = ferryd_usage(pid)?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("    {n:>5}/{count} containers  {secs:>6.1} s  ferryd RSS {rss} KiB, {fds} fds");
        samples.push(json!({ "containers": n, "seconds": secs, "rss_kib": rss, "fds": fds }));
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();

    // Removed containers' flows stay in conntrack until they time out;
    // that is the GC's job, so the map fill of `ct` is not compared.
    let after = world.footprint();
    let (rss_end, fds_end) = ferryd_usage(pid)?;
    let growth = rss_end.saturating_sub(rss_warm);
    let report = json!({
        "containers": count,
        "parallel": args.parallel,
        "seconds": elapsed,
        "per_container_ms": elapsed * 1000.0 / count as f64 * args.parallel as f64,
        "rss_kib": { "after_warmup": rss_warm, "end": rss_end, "growth": growth },
        "fds": { "before": fds_before, "end": fds_end },
        "samples": samples,
    });
    let out_dir = workspace_root().join("target/soak");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    step(&format!(
        "soak: {count} containers in {elapsed:.1} s; ferryd RSS {rss_warm} -> {rss_end} KiB, \
         fds {fds_before} -> {fds_end}; report in target/soak/report.json"
    ));
    let mut leaks = Vec::new();
    if after != before {
        leaks.push(format!(
            "footprint changed:\n  before {before:?}\n  after  {after:?}"
        ));
    }
    if fds_end != fds_before {
        leaks.push(format!(
            "ferryd's descriptors: {fds_before} before, {fds_end} after"
        ));
    }
    if growth > RSS_SLACK_KIB {
        leaks.push(format!(
            "ferryd's memory grew by {growth} KiB (more than {RSS_SLACK_KIB} KiB)"
        ));
    }
    if !leaks.is_empty() {
        bail!("soak found leaks:\n{}", leaks.join("\n"));
    }
    step("soak: no leaks");
    Ok(())
}
