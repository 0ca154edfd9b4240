//! Several hosts and an etcd cluster, all namespaces on one segment: a
//! fabric namespace holding a bridge; worlds whose ferryd joins the
//! cluster through a second uplink (`fab0`) plugged into it; etcd members
//! in namespaces of their own on the same bridge. Everything goes when its
//! owner drops, etcd members by their PIDs.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::*;

/// The segment's first three octets; hosts and etcd members take the last.
pub const FABRIC_NET: &str = "10.201.0";

pub struct Fabric {
    pub ns: TempNetns,
    ports: AtomicU32,
}

impl Fabric {
    pub fn new() -> Self {
        let ns = TempNetns::new(&unique_name("fyf"));
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        Self {
            ns,
            ports: AtomicU32::new(0),
        }
    }

    /// Plugs namespace `ns` in as `ifname` at `FABRIC_NET.<octet>/24`;
    /// returns that address.
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
        let ip = format!("{FABRIC_NET}.{octet}");
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
        ip
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
        world.start_ferryd();
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
