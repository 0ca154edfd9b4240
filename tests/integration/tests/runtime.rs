//! The container runtime driven through the CLI as a user would: attached
//! and detached runs, isolation, root filesystem, cgroup limits, logs,
//! signals, clean removal, and surviving a crash of ferryd.

use std::{path::Path, process::Output, time::Duration};

use ferry_integration::{World, wait_until};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry run --rm [flags] -- sh -c script`, attached.
fn sh(world: &World, flags: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    world.ferry(&args)
}

/// Like [`sh`], requiring exit code 0; returns stdout.
fn sh_ok(world: &World, flags: &[&str], script: &str) -> String {
    let out = sh(world, flags, script);
    assert!(
        out.status.success(),
        "{script:?} failed ({:?}):\n{}{}\nferryd log:\n{}",
        out.status.code(),
        stdout(&out),
        stderr(&out),
        world.ferryd_log()
    );
    stdout(&out)
}

fn exit_code_of(world: &World, name: &str) -> i64 {
    let out = world.ferry_ok(&["wait", name]);
    out.trim().parse().expect("exit code")
}

#[test]
fn attached_run_streams_both_streams_and_returns_the_exit_code() {
    let world = World::new();
    let out = sh(&world, &[], "echo to-out; echo to-err >&2; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "to-out\n");
    assert_eq!(stderr(&out), "to-err\n");
    // --rm: nothing is left once the exit code is in.
    assert_eq!(world.ferry_ok(&["ps", "-aq"]).trim(), "");
    assert!(world.container_cgroups().is_empty());
}

#[test]
fn hostname_pid_namespace_and_privileges_are_isolated() {
    let world = World::new();
    let out = sh_ok(
        &world,
        &["--hostname", "box"],
        "hostname; echo pid=$$; cat /etc/hostname; grep -c . /proc/[0-9]*/stat | wc -l; \
         grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box");
    assert_eq!(lines[1], "pid=1", "the workload is PID 1");
    assert_eq!(lines[2], "box");
    // sh, grep and wc: nothing of the host's processes.
    let visible: u32 = lines[3].trim().parse().expect("process count");
    assert!(visible <= 3, "{visible} processes visible");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn the_default_root_is_a_private_overlay_of_the_host() {
    let world = World::new();
    let marker = format!("/root/{}-marker", world.name);
    let state = world.dir.join("state");
    let out = sh_ok(
        &world,
        &[],
        &format!(
            "test -x /usr/bin/python3 && echo host-tools; touch {marker} && echo wrote; \
             ls -A {} | wc -l; ls -A /run | wc -l; cat /proc/kcore | wc -c; \
             mount | grep -c ' /sys .*ro,'; ls /dev",
            state.display()
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "host-tools", "{out}");
    assert_eq!(lines[1], "wrote");
    assert!(
        !Path::new(&marker).exists(),
        "a container write reached the host"
    );
    assert_eq!(lines[2], "0", "ferry's state is visible inside: {out}");
    assert_eq!(lines[3], "0", "the host's /run is visible inside: {out}");
    assert_eq!(lines[4], "0", "/proc/kcore is not masked");
    assert_eq!(lines[5], "1", "/sys is not read-only: {out}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(lines.contains(&dev), "/dev/{dev} missing: {out}");
    }
}

#[test]
fn volumes_workdir_read_only_root_and_a_given_rootfs() {
    let world = World::new();
    let data = world.dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("file"), "from the host\n").expect("file");
    let ro = format!("{}:/data:ro", data.display());
    let out = sh(
        &world,
        &["-v", &ro, "-w", "/data"],
        "pwd; cat file; touch new",
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "write to a :ro volume: {}",
        stdout(&out)
    );
    assert_eq!(stdout(&out), "/data\nfrom the host\n");

    let rw = format!("{}:/data", data.display());
    sh_ok(&world, &["-v", &rw], "echo back > /data/new");
    assert_eq!(
        std::fs::read_to_string(data.join("new")).expect("written through the volume"),
        "back\n"
    );

    let out = sh(&world, &["--read-only"], "touch /etc/x");
    assert_ne!(out.status.code(), Some(0), "--read-only root was writable");
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );

    // A root filesystem of a single static busybox.
    let image = world.dir.join("image");
    std::fs::create_dir_all(image.join("bin")).expect("image dir");
    std::fs::copy("/usr/bin/busybox", image.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", image.join("bin/sh")).expect("symlink");
    let rootfs = image.display().to_string();
    let out = sh_ok(
        &world,
        &["--rootfs", &rootfs],
        "/bin/busybox ls /; /bin/busybox cat /etc/hostname",
    );
    let entries: Vec<&str> = out.lines().collect();
    assert!(
        entries.contains(&"bin") && entries.contains(&"proc"),
        "{out}"
    );
    assert!(
        !entries.contains(&"usr"),
        "the host's root leaked in: {out}"
    );
}

#[test]
fn logs_keep_what_the_workload_printed() {
    let world = World::new();
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; done; echo oops >&2; sleep 1; echo last",
    ]);
    assert_eq!(exit_code_of(&world, "talker"), 0);
    let all = world.ferry(&["logs", "talker"]);
    assert_eq!(stdout(&all), "line1\nline2\nline3\nlast\n");
    assert_eq!(stderr(&all), "oops\n");
    assert_eq!(
        stdout(&world.ferry(&["logs", "--tail", "2", "talker"])),
        "last\n"
    );
    // -f on a running container ends when it exits, with all its output.
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--",
        "sh",
        "-c",
        "sleep 1; echo done",
    ]);
    assert_eq!(world.ferry_ok(&["logs", "-f", "slow"]), "done\n");
}

#[test]
fn stop_sends_sigterm_then_sigkill_and_kill_sends_the_signal() {
    let world = World::new();
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--",
        "sh",
        "-c",
        "trap 'exit 9' USR1; echo ready; while :; do sleep 0.1; done",
    ]);
    for name in ["polite", "stubborn", "usr1"] {
        assert!(
            wait_until(Duration::from_secs(10), || world
                .ferry_ok(&["logs", name])
                .contains("ready")),
            "{name} did not start"
        );
    }
    world.ferry_ok(&["stop", "-t", "10", "polite"]);
    assert_eq!(exit_code_of(&world, "polite"), 7);
    assert!(world.ferry_ok(&["logs", "polite"]).contains("got-term"));
    world.ferry_ok(&["stop", "-t", "1", "stubborn"]);
    assert_eq!(exit_code_of(&world, "stubborn"), 137);
    world.ferry_ok(&["kill", "-s", "USR1", "usr1"]);
    assert_eq!(exit_code_of(&world, "usr1"), 9);
    let out = world.ferry(&["kill", "-s", "NOPE", "polite"]);
    assert!(!out.status.success());
}

#[test]
fn a_memory_hog_over_its_limit_is_oom_killed_and_reported() {
    let world = World::new();
    world.ferry_ok(&[
        "run",
        "-d",
        "--name",
        "hog",
        "-m",
        "32m",
        "--",
        "python3",
        "-c",
        "b = bytearray(512 << 20); print('survived')",
    ]);
    assert_eq!(exit_code_of(&world, "hog"), 137);
    let j = world.inspect("hog");
    assert_eq!(j["State"]["OOMKilled"], true, "{j}");
    assert_eq!(j["State"]["ExitCode"], 137);
    assert_eq!(j["HostConfig"]["Memory"], 32 << 20);
    assert!(world.ferry_ok(&["ps", "-a"]).contains("oom(137)"));
    assert!(!world.ferry_ok(&["logs", "hog"]).contains("survived"));
}

/// Forks children that sleep until it cannot fork any more.
const FORK_LOOP: &str = "
import os, time
n = 0
try:
    for _ in range(30):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        n += 1
except OSError as e:
    print('fork failed after', n, e, flush=True)
time.sleep(600)
";

#[test]
fn a_fork_loop_stops_at_the_pids_limit() {
    let world = World::new();
    let c = world.run_with(
        "forks",
        &["--pids-limit", "10"],
        &["python3", "-c", FORK_LOOP],
    );
    assert_eq!(world.cgroup_file(&c.id, "pids", "pids.max"), "10");
    assert!(
        wait_until(Duration::from_secs(10), || world
            .ferry_ok(&["logs", "forks"])
            .contains("fork failed after 9")),
        "the fork loop was not stopped at 10 processes: {}",
        world.ferry_ok(&["logs", "forks"])
    );
    let stats = world.stats("forks");
    assert_eq!(stats["Pids"], 10, "{stats}");
}

#[test]
fn cpu_limits_are_applied_and_throttle_under_load() {
    let world = World::new();
    let c = world.run_with(
        "spin",
        &["--cpus", "0.5", "--cpuset-cpus", "0", "--cpu-shares", "512"],
        &["sh", "-c", "while :; do :; done"],
    );
    let v1 = Path::new("/sys/fs/cgroup/cpu").join(&world.name).exists();
    if v1 {
        assert_eq!(world.cgroup_file(&c.id, "cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(
            world.cgroup_file(&c.id, "cpu", "cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(world.cgroup_file(&c.id, "cpu", "cpu.shares"), "512");
    } else {
        assert_eq!(world.cgroup_file(&c.id, "cpu", "cpu.max"), "50000 100000");
    }
    assert_eq!(world.cgroup_file(&c.id, "cpuset", "cpuset.cpus"), "0");
    assert!(
        wait_until(Duration::from_secs(10), || {
            world.stats("spin")["NrThrottled"]
                .as_u64()
                .is_some_and(|n| n > 0)
        }),
        "never throttled: {}",
        world.stats("spin")
    );
    assert!(world.stats("spin")["CpuNs"].as_u64().is_some_and(|n| n > 0));
}

#[test]
fn bad_limits_and_paths_are_refused_and_leave_nothing() {
    let world = World::new();
    let state = world.dir.join("state").display().to_string();
    let own_volume = format!("{state}:/x");
    let own_rootfs = format!("{state}/containers");
    for (flags, expected) in [
        (&["-m", "1m"][..], "minimum memory"),
        (&["--rootfs", "/"], "the host's root"),
        (&["--rootfs", &own_rootfs], "ferry's own directory"),
        (&["-v", &own_volume], "ferry's own directory"),
        (&["-m", "lots"], "--memory"),
        (&["--cpus", "1000"], "--cpus"),
        (&["--cpuset-cpus", "9999"], "--cpuset-cpus"),
        (
            &["--rootfs", "/nonexistent-ferry-root"],
            "no such directory",
        ),
        (&["-v", "/nonexistent-ferry-src:/x"], "does not exist"),
        (&["-v", "relative:/x"], "invalid volume"),
        (&["-w", "relative"], "absolute"),
        (&["--network", "nosuchnet"], "network nosuchnet not found"),
        (&["--network", "none", "-p", "80"], "conflicting options"),
    ] {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "true"]);
        let out = world.ferry(&args);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(
            stderr(&out).contains(expected),
            "{flags:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(world.ferry_ok(&["ps", "-aq"]).trim(), "");
    assert!(
        world.container_cgroups().is_empty(),
        "{:?}",
        world.container_cgroups()
    );
    let containers = world.dir.join("state/containers");
    let left = std::fs::read_dir(&containers).map_or(0, |d| d.count());
    assert_eq!(left, 0, "state left in {}", containers.display());
}

#[test]
fn rm_leaves_no_cgroup_mount_veth_map_entry_or_state() {
    let world = World::new();
    let c = world.run_with(
        "gone",
        &["-m", "64m", "--pids-limit", "50"],
        &["sleep", "infinity"],
    );
    assert!(!world.container_cgroups().is_empty());
    world.ferry_ok(&["rm", "-f", "gone"]);
    assert!(
        world.container_cgroups().is_empty(),
        "{:?}",
        world.container_cgroups()
    );
    assert!(!world.dir.join("state/containers").join(&c.id).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&c.id), "a mount of the container is left");
    let links = String::from_utf8_lossy(
        &world
            .in_host("ip", &["-o", "link", "show"])
            .output()
            .expect("ip link")
            .stdout,
    )
    .into_owned();
    assert!(!links.contains(&c.host_veth), "{links}");
    let d: serde_json::Value =
        serde_json::from_str(&world.ferry_ok(&["datapath", "--json"])).expect("datapath JSON");
    assert_eq!(d["Endpoints"], 0);
}

#[test]
fn a_killed_ferryd_leaves_containers_running_and_collects_their_exit_codes() {
    let mut world = World::new();
    let gate = world.dir.join("gate");
    std::fs::create_dir_all(&gate).expect("gate dir");
    let volume = format!("{}:/gate", gate.display());
    world.run_with(
        "waiter",
        &["-v", &volume],
        &[
            "sh",
            "-c",
            "echo waiting; while [ ! -e /gate/go ]; do sleep 0.1; done; echo released; exit 5",
        ],
    );
    let sleeper = world.run("sleeper", &["sleep", "infinity"]);
    let monitor = world.inspect("waiter")["Ferry"]["MonitorPid"]
        .as_u64()
        .expect("MonitorPid");
    world.kill_ferryd();

    // While ferryd is down the container runs, is released and exits.
    std::fs::write(gate.join("go"), "").expect("open the gate");
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{monitor}"
        ))
        .exists()),
        "the container did not exit while ferryd was down"
    );
    world.start_ferryd();
    assert_eq!(exit_code_of(&world, "waiter"), 5);
    assert_eq!(world.ferry_ok(&["logs", "waiter"]), "waiting\nreleased\n");
    assert_eq!(world.inspect("sleeper")["State"]["Status"], "running");
    assert_eq!(world.inspect("sleeper")["State"]["Pid"], sleeper.pid);
    // PID 1 without a SIGTERM handler ignores it: SIGKILL after 1 s.
    world.ferry_ok(&["stop", "-t", "1", "sleeper"]);
    assert_eq!(exit_code_of(&world, "sleeper"), 137);
    assert!(
        world.container_cgroups().is_empty(),
        "{:?}",
        world.container_cgroups()
    );
}

#[test]
fn network_modes_none_host_and_another_containers() {
    let world = World::new();
    let none = sh_ok(
        &world,
        &["--network", "none"],
        "ip -o link show | cut -d: -f2",
    );
    assert_eq!(none.split_whitespace().collect::<Vec<_>>(), ["lo"]);

    let host = sh_ok(
        &world,
        &["--network", "host"],
        "ip -o link show | cut -d: -f2",
    );
    assert!(host.contains("uplink0"), "not the host's namespace: {host}");

    let a = world.run("a", &["sleep", "infinity"]);
    let joined = sh_ok(
        &world,
        &["--network", "container:a"],
        "ip -o -4 addr show dev eth0",
    );
    assert!(joined.contains(&format!("{}/32", a.ip)), "{joined}");
    let out = world.ferry(&["run", "-d", "--network", "container:nope", "--", "true"]);
    assert!(
        stderr(&out).contains("no such container: nope"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_runs_inside_the_running_container() {
    let world = World::new();
    let c = world.run_with(
        "target",
        &["--hostname", "inner", "-e", "FROM_RUN=1", "-w", "/srv"],
        &["sh", "-c", "echo made > /tmp/inside; sleep infinity"],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        world
            .ferry(&["exec", "target", "test", "-e", "/tmp/inside"])
            .status
            .success()
    }));
    let out = world.ferry(&[
        "exec",
        "-e",
        "FROM_EXEC=2",
        "target",
        "sh",
        "-c",
        "cat /tmp/inside; hostname; pwd; echo $FROM_RUN$FROM_EXEC; \
         cat /proc/1/comm; grep memory /proc/self/cgroup; echo oops >&2; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..4], ["made", "inner", "/srv", "12"], "{text}");
    assert_eq!(lines[4], "sh", "not the container's PID namespace: {text}");
    if Path::new("/sys/fs/cgroup/memory")
        .join(&world.name)
        .exists()
    {
        assert!(
            lines[5].contains(&c.id),
            "not in the container's cgroup: {text}"
        );
    }
    assert_eq!(stderr(&out), "oops\n");

    // A request bigger than one argv string may be (128 KiB): 300 KB of
    // environment in three entries.
    let big: Vec<String> = ["A", "B", "C"]
        .iter()
        .map(|k| format!("{k}={}", "x".repeat(100_000)))
        .collect();
    let mut args = vec!["exec"];
    for e in &big {
        args.extend(["-e", e.as_str()]);
    }
    args.extend(["target", "sh", "-c", "echo $((${#A} + ${#B} + ${#C}))"]);
    let out = world.ferry(&args);
    assert_eq!(stdout(&out).trim(), "300000", "{}", stderr(&out));

    let missing = world.ferry(&["exec", "target", "no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );

    world.ferry_ok(&["rm", "-f", "target"]);
    let gone = world.ferry(&["exec", "target", "true"]);
    assert!(
        stderr(&gone).contains("no such container"),
        "{}",
        stderr(&gone)
    );
}

#[test]
fn the_host_python_serves_http_from_a_container_without_an_image() {
    let world = World::new();
    world.run_with(
        "web",
        &["-p", "8080:80", "-w", "/srv/site"],
        &[
            "sh",
            "-c",
            "echo from-the-overlay > index.html; exec python3 -m http.server 80",
        ],
    );
    let url = format!(
        "http://{}:8080/index.html",
        ferry_integration::HOST_UPLINK_IP
    );
    let served = wait_until(Duration::from_secs(15), || {
        let out = ferry_integration::output(
            &mut world.in_client("curl", &["-sS", "--max-time", "2", &url]),
        );
        stdout(&out) == "from-the-overlay\n"
    });
    assert!(
        served,
        "no answer from python3 -m http.server: {}",
        world.ferry_ok(&["logs", "web"])
    );
}
