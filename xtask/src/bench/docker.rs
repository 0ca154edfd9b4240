//! Docker's bridge datapath, rebuilt from real parts in the bench's own
//! namespaces: a bridge with a gateway address, one veth per container,
//! `ip_forward` and `br_netfilter` on, and the iptables rules Docker 20.10+
//! writes (nat DOCKER chain with DNAT per published port, MASQUERADE, the
//! FORWARD/isolation chains). Nothing here touches the machine's own
//! namespace.

use std::{io::Write as _, process::Stdio};

use anyhow::Context as _;
use ferry_integration::{TempNetns, unique_name};

use crate::capture;

/// A Docker-style bridge network with its containers.
pub struct DockerBridge {
    /// The namespace playing Docker's host: the bridge, iptables, uplink.
    pub host: TempNetns,
    pub containers: Vec<TempNetns>,
    /// Container addresses, in order.
    pub ips: Vec<String>,
    subnet: String,
}

impl DockerBridge {
    /// A bridge `<prefix>.0/24` (gateway `.1`) with `n` containers at `.2`...
    pub fn new(prefix: &str, n: usize) -> anyhow::Result<Self> {
        let tag = unique_name("fyd");
        let host = TempNetns::new(&format!("{tag}-h"));
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", "br0"]);
        host.ip(&["link", "set", "br0", "up"]);
        let mut containers = Vec::new();
        let mut ips = Vec::new();
        for i in 0..n {
            let ns = TempNetns::new(&format!("{tag}-c{i}"));
            let port = format!("veth{i}");
            let ip = format!("{prefix}.{}", i + 2);
            host.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            host.ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &format!("{prefix}.1")]);
            containers.push(ns);
            ips.push(ip);
        }
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
        ] {
            capture(&mut host.cmd("sysctl", &["-qw", sysctl]))?;
        }
        let bridge = Self {
            host,
            containers,
            ips,
            subnet: format!("{prefix}.0/24"),
        };
        bridge.restore(&bridge.rules(&[]))?;
        Ok(bridge)
    }

    /// Publishes `host_port` to container `index`'s `container_port` the way
    /// dockerd does (all rules rewritten, as `iptables-restore` would).
    pub fn publish(&self, publishes: &[(u16, usize, u16)]) -> anyhow::Result<()> {
        self.restore(&self.rules(publishes))
    }

    fn rules(&self, publishes: &[(u16, usize, u16)]) -> String {
        let subnet = &self.subnet;
        let mut nat = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A POSTROUTING -s {subnet} ! -o br0 -j MASQUERADE\n\
             -A DOCKER -i br0 -j RETURN\n"
        );
        let mut filter = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n\
             :DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]\n\
             -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
             -A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A FORWARD -o br0 -j DOCKER\n-A FORWARD -i br0 ! -o br0 -j ACCEPT\n\
             -A FORWARD -i br0 -o br0 -j ACCEPT\n\
             -A DOCKER-ISOLATION-STAGE-1 -i br0 ! -o br0 -j DOCKER-ISOLATION-STAGE-2\n\
             -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n\
             -A DOCKER-ISOLATION-STAGE-2 -o br0 -j DROP\n\
             -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n-A DOCKER-USER -j RETURN\n",
        );
        for &(host_port, index, container_port) in publishes {
            let ip = &self.ips[index];
            nat.push_str(&format!(
                "-A POSTROUTING -s {ip}/32 -d {ip}/32 -p tcp -m tcp --dport {container_port} -j MASQUERADE\n\
                 -A DOCKER ! -i br0 -p tcp -m tcp --dport {host_port} -j DNAT --to-destination {ip}:{container_port}\n"
            ));
            filter.push_str(&format!(
                "-A DOCKER -d {ip}/32 ! -i br0 -o br0 -p tcp -m tcp --dport {container_port} -j ACCEPT\n"
            ));
        }
        format!("{nat}COMMIT\n{filter}COMMIT\n")
    }

    fn restore(&self, rules: &str) -> anyhow::Result<()> {
        let mut child = self
            .host
            .cmd("iptables-restore", &[])
            .stdin(Stdio::piped())
            .spawn()
            .context("iptables-restore")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes())?;
        }
        anyhow::ensure!(child.wait()?.success(), "iptables-restore failed:\n{rules}");
        Ok(())
    }
}
