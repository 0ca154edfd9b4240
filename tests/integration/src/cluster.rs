//! Several hosts and an etcd cluster as namespaces: a fabric namespace
//! holding a bridge (a segment); worlds whose ferryd joins the cluster
//! through a second uplink (`fab0`) plugged into one; etcd members in
//! namespaces of their own on it; a router joining two segments.
//! Everything goes when its owner drops, etcd members by their PIDs.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::*;

/// The first segment's first three octets; hosts and etcd members take
/// the last.
pub const FABRIC_NET: &str = "10.201.0";

pub struct Fabric {
    pub ns: TempNetns,
    /// The segment's /24, as its first three octets.
    pub net: String,
    ports: AtomicU32,
}

impl Fabric {
    /// A segment on `FABRIC_NET`.
    pub fn new() -> Self {
        Self::with_net(FABRIC_NET)
    }

    /// A segment on `<net>.0/24`.
    pub fn with_net(net: &str) -> Self {
        let ns = TempNetns::new(&unique_name("fyf"));
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        Self {
            ns,
            net: net.to_owned(),
            ports: AtomicU32::new(0),
        }
    }

    /// `<net>.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}.0/24", self.net)
    }

    /// Plugs namespace `ns` in as `ifname` at `<net>.<octet>/24`; returns
    /// that address.
    pub fn plug(&self, ns: &TempNetns, ifname: &str, octet: u8) -> String {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::SeqCst));
        ns.ip(&[
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.ns.name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0"]);
        self.ns.ip(&["link", "set", &port, "up"]);
        let ip = format!("{}.{octet}", self.net);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
        ip
    }
}

/// A namespace forwarding between two segments, at `.1` on each.
pub struct Router {
    pub ns: TempNetns,
}

impl Router {
    pub fn new(a: &Fabric, b: &Fabric) -> Self {
        let ns = TempNetns::new(&unique_name("fyr"));
        a.plug(&ns, "eth0", 1);
        b.plug(&ns, "eth1", 1);
        check(&mut ns.cmd("sysctl", &["-qw", "net.ipv4.ip_forward=1"]));
        Self { ns }
    }
}

impl Default for Fabric {
    fn default() -> Self {
        Self::new()
    }
}

struct Member {
    ns: TempNetns,
    ip: String,
    child: Option<Child>,
}

/// An etcd cluster (Debian's etcd-server), one member per namespace.
pub struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
    token: String,
}

impl Etcd {
    /// `n` members at `FABRIC_NET.201` onwards, started and answering.
    pub fn start(fabric: &Fabric, n: usize) -> Self {
        let token = unique_name("fye");
        let dir = std::env::temp_dir().join(&token);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let ns = TempNetns::new(&format!("{token}-{i}"));
                let ip = fabric.plug(&ns, "eth0", 201 + i as u8);
                Member {
                    ns,
                    ip,
                    child: None,
                }
            })
            .collect();
        let mut etcd = Self {
            members,
            dir,
            token,
        };
        for i in 0..n {
            etcd.spawn(i, "new");
        }
        etcd.wait_healthy(&(0..n).collect::<Vec<_>>());
        etcd
    }

    fn name(&self, i: usize) -> String {
        format!("m{i}")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| format!("{}=http://{}:2380", self.name(j), m.ip))
            .collect();
        let m = &self.members[i];
        let log = File::create(self.dir.join(format!("{}.log", self.name(i)))).expect("etcd log");
        let data = self.dir.join(format!("data-{i}"));
        let args = [
            "--name".to_owned(),
            self.name(i),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-peer-urls".into(),
            format!("http://{}:2380", m.ip),
            "--initial-advertise-peer-urls".into(),
            format!("http://{}:2380", m.ip),
            "--listen-client-urls".into(),
            format!("http://{}:2379", m.ip),
            "--advertise-client-urls".into(),
            format!("http://{}:2379", m.ip),
            "--initial-cluster".into(),
            cluster.join(","),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--initial-cluster-state".into(),
            state.into(),
            "--logger=zap".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = in_netns(&m.ns.path(), "etcd", &args)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Waits until members `alive` all answer a health check.
    fn wait_healthy(&self, alive: &[usize]) {
        let endpoints: Vec<String> = alive
            .iter()
            .map(|&i| format!("http://{}:2379", self.members[i].ip))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = output(
                self.members[alive[0]]
                    .ns
                    .cmd("etcdctl", &["endpoint", "health"])
                    .env("ETCDCTL_API", "3")
                    .env("ETCDCTL_ENDPOINTS", endpoints.join(",")),
            );
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log(alive[0])
            );
            sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name(i)))).unwrap_or_default()
    }

    /// `--cluster` for ferryd.
    pub fn url(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}:2379", m.ip))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// Kills member `i` (SIGKILL, as a crash would) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Gives every member a route to `cidr` via `gateway`.
    pub fn route(&self, cidr: &str, gateway: &str) {
        for m in &self.members {
            m.ns.ip(&["route", "add", cidr, "via", gateway]);
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i, "existing");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    /// A world whose ferryd joins the cluster at `cluster` (etcd://...)
    /// through `fab0`, plugged into `fabric` at `FABRIC_NET.<octet>`, with
    /// `extra` ferryd flags.
    pub fn cluster_member(fabric: &Fabric, cluster: &str, octet: u8, extra: &[&str]) -> Self {
        let mut world = Self::cluster_member_unstarted(fabric, cluster, octet, extra);
        world.start_ferryd();
        world
    }

    /// [`World::cluster_member`] without starting ferryd (to route first).
    pub fn cluster_member_unstarted(
        fabric: &Fabric,
        cluster: &str,
        octet: u8,
        extra: &[&str],
    ) -> Self {
        let mut world = Self::with_subnet_unstarted(None);
        let ip = fabric.plug(&world.host, "fab0", octet);
        let name = world.name.clone();
        world.extra_args = [
            "--cluster",
            cluster,
            "--node-name",
            &name,
            "--uplink",
            "fab0",
            "--cluster-address",
            &ip,
        ]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect();
        world
    }

    /// `ferry node ls --json`.
    pub fn nodes(&self) -> serde_json::Value {
        serde_json::from_str(&self.ferry_ok(&["node", "ls", "--json"])).expect("node ls JSON")
    }

    /// This node's block (`ferry node ls`).
    pub fn block(&self) -> String {
        self.nodes()["Members"][0]["Block"]
            .as_str()
            .expect("own block")
            .to_owned()
    }

    /// Waits until this node lists member `name` with mode `mode`.
    pub fn wait_for_member(&self, name: &str, mode: &str) {
        assert!(
            wait_until(Duration::from_secs(15), || {
                self.nodes()["Members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["Name"] == name && m["Mode"] == mode))
            }),
            "{} never saw member {name} as {mode}: {}\n{}",
            self.name,
            self.nodes(),
            self.ferryd_log()
        );
    }

    /// Routes of the host namespace's main table.
    pub fn host_routes(&self) -> String {
        check(&mut self.in_host("ip", &["-4", "route", "show"]))
    }
}
