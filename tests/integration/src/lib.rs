//! Test harness for ferry's privileged integration tests.
//!
//! A [`World`] is a throwaway setup built from real parts: a "host" network
//! namespace where its own `ferryd` runs (own socket, state, run and pin
//! directories), and a "client" namespace joined to it by an uplink veth,
//! playing the outside network. Every name carries a unique prefix, and
//! `Drop` tears everything down even when the test panics. Nothing here
//! touches the machine's own interfaces, routes or firewall.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::AtomicU32,
    thread::sleep,
    time::{Duration, Instant},
};

pub mod cluster;
pub mod cni;
pub mod docker;
mod footprint;
pub mod image;
pub mod podman;
mod process;
pub mod registry;

pub use footprint::Footprint;
pub use process::*;

/// Address of the host namespace on the uplink, and of the client.
pub const HOST_UPLINK_IP: &str = "10.200.0.1";
pub const CLIENT_IP: &str = "10.200.0.2";

static COUNTER: AtomicU32 = AtomicU32::new(0);

static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Tells the harness where the binaries are (for users other than tests,
/// e.g. xtask's demo and benchmarks). First call wins.
pub fn use_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// Where `ferryd` and `ferry` live: as set by [`use_bin_dir`], else
/// `FERRY_BIN_DIR` (set by `cargo xtask test`), else next to this test's own
/// profile directory.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = BIN_DIR.get() {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

/// A container as the tests see it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub pid: u32,
    pub ip: String,
    pub host_veth: String,
    pub netns: PathBuf,
}

pub struct World {
    pub name: String,
    pub host: TempNetns,
    pub client: TempNetns,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub subnet: String,
    /// The world's own cgroup2 directory: ferryd, its containers and the
    /// host-side clients of the tests run in it, and the socket hooks are
    /// attached to it (never to the machine's root cgroup).
    pub cgroup: PathBuf,
    /// Extra ferryd flags (e.g. short conntrack timeouts).
    pub extra_args: Vec<String>,
    ferryd: Option<Child>,
}

impl World {
    /// A world with ferryd running in the host namespace.
    pub fn new() -> Self {
        Self::with_subnet_unstarted(None).started()
    }

    /// The namespaces and directories only; call [`World::start_ferryd`].
    pub fn with_subnet_unstarted(subnet: Option<&str>) -> Self {
        let name = unique_name("fyt");
        let world = Self {
            host: TempNetns::new(&format!("{name}-h")),
            client: TempNetns::new(&format!("{name}-c")),
            dir: std::env::temp_dir().join(&name),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
            socket: std::env::temp_dir().join(&name).join("ferry.sock"),
            subnet: subnet.unwrap_or("10.89.0.0/24").to_owned(),
            cgroup: cgroup2_root().join(&name),
            extra_args: Vec::new(),
            ferryd: None,
            name,
        };
        std::fs::create_dir_all(&world.dir).expect("create world dir");
        std::fs::create_dir_all(&world.cgroup).expect("create world cgroup");
        let (h, c) = (&world.host, &world.client);
        h.ip(&[
            "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", &c.name,
        ]);
        h.ip(&[
            "addr",
            "add",
            &format!("{HOST_UPLINK_IP}/24"),
            "dev",
            "uplink0",
        ]);
        c.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]);
        h.ip(&["link", "set", "uplink0", "up"]);
        c.ip(&["link", "set", "eth0", "up"]);
        world
    }

    /// A world whose ferryd gets these extra flags.
    pub fn with_ferryd_args(args: &[&str]) -> Self {
        let mut world = Self::with_subnet_unstarted(None);
        world.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        world.started()
    }

    fn started(mut self) -> Self {
        self.start_ferryd();
        self
    }

    pub fn host_ns_path(&self) -> PathBuf {
        self.host.path()
    }

    pub fn client_ns_path(&self) -> PathBuf {
        self.client.path()
    }

    /// ferryd's flags for this world.
    pub fn ferryd_args(&self) -> Vec<String> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        // In a cluster the subnet is the block the node claims.
        let clustered = self.extra_args.iter().any(|a| a == "--cluster");
        (!clustered)
            .then(|| ["--subnet".to_owned(), self.subnet.clone()])
            .into_iter()
            .flatten()
            .chain([
                "--state-dir".into(),
                d("state"),
                "--run-dir".into(),
                d("run"),
                "--pin-dir".into(),
                self.pin_dir.display().to_string(),
                "--socket".into(),
                self.socket.display().to_string(),
                // Always explicit: a world never relies on default-route detection.
                "--uplink".into(),
                "uplink0".into(),
                "--cgroup".into(),
                self.cgroup.display().to_string(),
                // Containers' cgroups under a parent of the world's own name.
                "--cgroup-parent".into(),
                self.name.clone(),
                // Never the machine's /run/docker/plugins: worlds run side by side.
                "--docker-plugin".into(),
                d("plugins/ferry.sock"),
            ])
            // The uplink is a veth, where `auto` leaves XDP off: tests want
            // the prefilter unless they say otherwise.
            .chain(
                (!self.extra_args.iter().any(|a| a == "--xdp-prefilter"))
                    .then(|| ["--xdp-prefilter".to_owned(), "on".to_owned()])
                    .into_iter()
                    .flatten(),
            )
            .chain(self.extra_args.iter().cloned())
            .collect()
    }

    /// A `ferryd` command in the host namespace with this world's flags.
    pub fn ferryd_command(&self) -> Command {
        self.ferryd_command_with(&[])
    }

    /// Like [`World::ferryd_command`], with some flags given other values.
    pub fn ferryd_command_with(&self, overrides: &[(&str, &str)]) -> Command {
        let mut args = self.ferryd_args();
        for (flag, value) in overrides {
            let at = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("no flag {flag} to override"));
            args[at + 1] = (*value).to_owned();
        }
        let bin = bin_dir().join("ferryd");
        let mut cmd = in_netns(&self.host_ns_path(), &bin.display().to_string(), &[]);
        join_cgroup(&mut cmd, &self.cgroup);
        cmd.args(args);
        cmd
    }

    /// Starts ferryd and waits until its API answers.
    pub fn start_ferryd(&mut self) {
        assert!(self.ferryd.is_none(), "ferryd already running");
        let log = File::create(self.dir.join("ferryd.log")).expect("ferryd log");
        let child = self
            .ferryd_command()
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn ferryd");
        self.ferryd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ferry(&["ps"]).status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.ferryd.as_mut().map(Child::try_wait) {
                panic!("ferryd exited with {status}:\n{}", self.ferryd_log());
            }
            assert!(
                Instant::now() < deadline,
                "ferryd did not come up:\n{}",
                self.ferryd_log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Stops ferryd with SIGTERM (containers keep running).
    pub fn stop_ferryd(&mut self) {
        if let Some(mut child) = self.ferryd.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running ferryd's pid.
    pub fn ferryd_pid(&self) -> Option<u32> {
        self.ferryd.as_ref().map(Child::id)
    }

    /// Kills ferryd with SIGKILL, as a crash would (containers keep running).
    pub fn kill_ferryd(&mut self) {
        if let Some(mut child) = self.ferryd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The containers' cgroup directories of this world that exist: one
    /// parent per v1 hierarchy (or one under the world's cgroup2 dir), and
    /// whatever is below.
    pub fn container_cgroups(&self) -> Vec<PathBuf> {
        self.cgroup_parents()
            .iter()
            .filter_map(|p| std::fs::read_dir(p).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }

    /// Where this world's ferryd puts containers' cgroups (`--cgroup-parent`
    /// in each v1 hierarchy, and under the world's cgroup2 directory).
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        let mut parents: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "cpuset", "pids"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&self.name))
            .collect();
        parents.push(self.cgroup.join(&self.name));
        parents
    }

    /// A file of a container's cgroup: the v1 `controller` hierarchy's, or
    /// the cgroup2 one's when the machine runs v2.
    pub fn cgroup_file(&self, id: &str, controller: &str, file: &str) -> String {
        let candidates = [
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&self.name)
                .join(id)
                .join(file),
            self.cgroup.join(&self.name).join(id).join(file),
        ];
        candidates
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| panic!("no cgroup file {file} for {id}: tried {candidates:?}"))
            .trim()
            .to_owned()
    }

    pub fn ferryd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ferryd.log")).unwrap_or_default()
    }

    /// Runs the `ferry` CLI against this world's ferryd.
    pub fn ferry(&self, args: &[&str]) -> Output {
        let bin = bin_dir().join("ferry");
        output(Command::new(bin).arg("-H").arg(&self.socket).args(args))
    }

    /// Runs the `ferry` CLI with `input` on its stdin and `env` added.
    pub fn ferry_with_input(&self, args: &[&str], input: &[u8], env: &[(&str, &Path)]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(bin_dir().join("ferry"))
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write ferry's stdin");
        child.wait_with_output().expect("ferry")
    }

    /// Runs `ferry` and requires success; returns stdout.
    pub fn ferry_ok(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed:\n{}\nferryd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.ferryd_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry run -d --name <name> -- <cmd>`, then its details.
    pub fn run(&self, name: &str, cmd: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--name", name, "--"];
        args.extend_from_slice(cmd);
        self.ferry_ok(&args);
        self.container(name)
    }

    /// `ferry run -d --name <name> <flags> -- <cmd>`, then its details.
    pub fn run_with(&self, name: &str, flags: &[&str], cmd: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(cmd);
        self.ferry_ok(&args);
        self.container(name)
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.ferry_ok(&["inspect", name]);
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect JSON");
        all.pop().expect("one container")
    }

    pub fn container(&self, name: &str) -> Container {
        let j = self.inspect(name);
        let pid = j["State"]["Pid"].as_u64().expect("State.Pid") as u32;
        Container {
            id: j["Id"].as_str().expect("Id").to_owned(),
            name: name.to_owned(),
            pid,
            ip: j["NetworkSettings"]["IPAddress"]
                .as_str()
                .expect("IPAddress")
                .to_owned(),
            host_veth: j["Ferry"]["HostVeth"]
                .as_str()
                .expect("HostVeth")
                .to_owned(),
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }

    /// `ferry datapath --json`.
    pub fn datapath(&self) -> serde_json::Value {
        serde_json::from_str(&self.ferry_ok(&["datapath", "--json"])).expect("datapath JSON")
    }

    /// One `ferry stats --json` row: datapath counters and cgroup usage.
    pub fn stats(&self, name: &str) -> serde_json::Value {
        let out = self.ferry_ok(&["stats", "--json", name]);
        let mut rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("stats JSON");
        rows.pop().expect("one row")
    }

    /// Drop counters by reason, from `ferry datapath --json`.
    pub fn drops(&self, reason: &str) -> u64 {
        let out = self.ferry_ok(&["datapath", "--json"]);
        let j: serde_json::Value = serde_json::from_str(&out).expect("datapath JSON");
        j["Drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop reason {reason} in {out}"))
    }

    /// A command in the host namespace (and the world's cgroup, like any
    /// host process under the socket hooks).
    pub fn in_host(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = self.host.cmd(program, args);
        join_cgroup(&mut cmd, &self.cgroup);
        cmd
    }

    /// Sends one `bytes`-long UDP datagram to `target` (ip:port) with a
    /// shell command made by `shell` (which picks the namespace) and requires
    /// the whole datagram echoed back; on failure shows the drop counters.
    pub fn assert_udp_round_trip(
        &self,
        bytes: usize,
        target: &str,
        mut shell: impl FnMut(&str) -> Command,
    ) {
        let script =
            format!("head -c {bytes} /dev/zero | tr '\\0' x | socat -b 8192 -T 2 - UDP:{target}");
        let got = wait_for_echo(Duration::from_secs(8), bytes, || shell(&script)).len();
        assert_eq!(
            got,
            bytes,
            "echoed {got} of {bytes} bytes\n{}",
            self.ferry_ok(&["datapath"])
        );
    }

    /// A command in a container's network namespace and the world's cgroup
    /// (where the container's own processes are).
    pub fn exec(&self, container: &Container, program: &str, args: &[&str]) -> Command {
        let mut cmd = in_netns(&container.netns, program, args);
        join_cgroup(&mut cmd, &self.cgroup);
        cmd
    }

    /// A command in the client namespace.
    pub fn in_client(&self, program: &str, args: &[&str]) -> Command {
        self.client.cmd(program, args)
    }

    /// `curl` of `url` from the client namespace: the body, or `None`.
    pub fn curl_from_client(&self, url: &str) -> Option<String> {
        let out = output(&mut self.in_client("curl", &["-sS", "--max-time", "2", url]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// An engine's container running [`busybox_tar`]'s httpd, published on
    /// `port`, serves the outside (seeing the client's own address) and the
    /// host's localhost (a process in the world's cgroup: the socket hooks).
    pub fn assert_busybox_published(&self, port: u16) {
        let base = format!("http://{HOST_UPLINK_IP}:{port}");
        assert_eq!(
            self.curl_eventually(&format!("{base}/")),
            "hello from busybox"
        );
        // busybox httpd listens on IPv6 too and names IPv4 peers mapped.
        assert_eq!(
            self.curl_eventually(&format!("{base}/cgi-bin/peer")),
            format!("peer [::ffff:{CLIENT_IP}]")
        );
        let local = output(&mut self.in_host(
            "curl",
            &[
                "-sS",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{port}/"),
            ],
        ));
        assert_eq!(
            String::from_utf8_lossy(&local.stdout).trim(),
            "hello from busybox"
        );
    }

    /// The body of `url` from the client namespace, once it answers (10 s
    /// at most).
    pub fn curl_eventually(&self, url: &str) -> String {
        let mut body = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                body = self.curl_from_client(url);
                body.is_some()
            }),
            "no answer from {url}\n{}",
            self.ferryd_log()
        );
        body.unwrap_or_default()
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.ferryd.is_some() {
            let ids = String::from_utf8_lossy(&self.ferry(&["ps", "-aq"]).stdout).into_owned();
            for id in ids.split_whitespace() {
                let _ = self.ferry(&["rm", "-f", id]);
            }
            self.stop_ferryd();
        }
        // Whatever ferryd left (or never got to remove): containers, pins,
        // state. Then the namespaces and directories themselves.
        let _ = self
            .ferryd_command()
            .arg("reset")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The namespaces go when `host` and `client` drop, after this.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // In case reset could not run: the containers' cgroup parents.
        for parent in self.cgroup_parents() {
            let _ = std::fs::remove_dir(parent);
        }
        // A cgroup can only be removed once its last process has exited.
        wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists()
        });
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Detaches every mount below `dir`, deepest first: a test that fails
/// before ferryd cleans up (or one that mounts there itself) must not
/// leave a mount that `remove_dir_all` cannot get past. Mount points with
/// characters mountinfo escapes never match; worlds' paths have none.
pub fn unmount_below(dir: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let Ok(path) = std::ffi::CString::new(point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path; umount2 only reads it.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The entry of map `name` in `ferry datapath --json` output.
pub fn map_of<'a>(datapath: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    datapath["Maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["Name"] == name))
        .unwrap_or_else(|| panic!("no map {name} in {datapath}"))
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        sleep(Duration::from_millis(50));
    }
    f()
}

/// Sends `payload` to `ip:port` over TCP from the namespace at `ns` and
/// returns what came back (the servers in these tests echo).
pub fn tcp_exchange(ns: &Path, ip: &str, port: u16, payload: &str) -> String {
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let mut last = String::new();
    for _ in 0..40 {
        let mut child = in_netns(ns, "socat", &["-T", "3", "-", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn socat");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            let _ = stdin.write_all(payload.as_bytes());
        }
        let out = child.wait_with_output().expect("socat output");
        if out.status.success() && !out.stdout.is_empty() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // The server may still be starting.
        sleep(Duration::from_millis(100));
    }
    panic!("no TCP answer from {ip}:{port}: {last}");
}

/// `iptables-save` and `nft list ruleset` of a namespace, without the
/// timestamp comments iptables-save adds.
pub fn rulesets(ns: &Path) -> String {
    let ipt = check(&mut in_netns(ns, "iptables-save", &[]));
    let nft = check(&mut in_netns(ns, "nft", &["list", "ruleset"]));
    ipt.lines()
        .filter(|l| !l.starts_with('#'))
        .chain(nft.lines())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `make()` until its stdout is `want` bytes long (a UDP echo that may
/// need its server to come up) or `timeout` passes; returns the last stdout.
pub fn wait_for_echo(timeout: Duration, want: usize, mut make: impl FnMut() -> Command) -> String {
    let mut got = Vec::new();
    wait_until(timeout, || {
        got = output(make().stderr(Stdio::null())).stdout;
        got.len() == want
    });
    String::from_utf8_lossy(&got).into_owned()
}

/// `ping -c <count>` from the namespace at `ns`; true if all replies came.
pub fn ping(ns: &Path, target: &str, count: u32, extra: &[&str]) -> bool {
    let count = count.to_string();
    let mut args = vec!["-c", count.as_str(), "-i", "0.2", "-W", "1", "-q"];
    args.extend_from_slice(extra);
    args.push(target);
    output(&mut in_netns(ns, "ping", &args)).status.success()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_below_detaches_nested_mounts_and_nothing_else() {
        let dir = std::env::temp_dir().join(unique_name("fyu"));
        let (outer, inner) = (dir.join("a"), dir.join("a/b"));
        let sibling = std::env::temp_dir().join(format!("{}-sibling", dir.display()));
        let mount = |at: &Path| {
            std::fs::create_dir_all(at).expect("mkdir");
            check(Command::new("mount").args(["-t", "tmpfs", "fyu", &at.display().to_string()]));
        };
        mount(&outer);
        mount(&inner);
        mount(&sibling);
        let mounted = |p: &Path| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .expect("mountinfo")
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(&*p.display().to_string()))
        };
        unmount_below(&dir);
        let (outer_left, inner_left, sibling_left) =
            (mounted(&outer), mounted(&inner), mounted(&sibling));
        unmount_below(&sibling);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&sibling);
        assert!(!outer_left && !inner_left, "mounts below the dir stay");
        assert!(sibling_left, "a mount outside the dir was detached");
        assert!(!mounted(&sibling));
    }
}
