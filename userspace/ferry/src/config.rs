//! ferryd's configuration: paths, the container subnet, the API socket.

use std::{net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;

/// Default locations; every one can be overridden so that tests and a
/// production daemon never share state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry";
pub const DEFAULT_RUN_DIR: &str = "/run/ferry";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferry";
pub const DEFAULT_SOCKET: &str = "/run/ferry/ferry.sock";
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
pub const DEFAULT_CGROUP_PARENT: &str = "ferry";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown group {0:?} for the API socket")]
    Group(String),
}

/// Everything ferryd needs to know at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// Group that may use the API socket (mode 0660), `None` for root only.
    pub socket_gid: Option<u32>,
    pub subnet: Ipv4Net,
    /// Interfaces where published ports are served; empty: the interfaces
    /// of the default route.
    pub uplinks: Vec<String>,
    /// cgroup2 directory the socket hooks attach to (every process below
    /// it gets `localhost:PORT` to published ports).
    pub cgroup: PathBuf,
    /// Containers' cgroups: `<hierarchy>/<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// Idle timeouts of tracked flows, by state.
    pub ct_timeouts: crate::conntrack::Timeouts,
    /// How often the conntrack GC runs.
    pub ct_gc_interval: std::time::Duration,
    /// Whether uplinks get the XDP prefilter.
    pub xdp_prefilter: XdpPrefilter,
    /// Capacities of the conntrack, endpoint and port maps.
    pub map_sizes: crate::datapath::MapSizes,
    /// Resolvers the embedded DNS forwards to (empty: the host's
    /// /etc/resolv.conf nameservers).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Where to serve Prometheus metrics (`None`: nowhere).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to serve the Docker network and IPAM plugin (`None`: nowhere).
    pub docker_plugin: Option<PathBuf>,
    /// Registries pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `--userns-remap`: `default` or `USER[:GROUP]`.
    pub userns_remap: Option<String>,
    /// `--cluster`: membership of a cluster kept in etcd (`None`: this
    /// host alone).
    pub cluster: Option<ClusterConfig>,
}

/// Default pool of container addresses of a cluster, and each node's
/// share of it.
pub const DEFAULT_CLUSTER_POOL: &str = "10.88.0.0/14";
pub const DEFAULT_CLUSTER_BLOCK: u8 = 24;

/// How this ferryd takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    pub pool: Ipv4Net,
    pub block_len: u8,
    pub lease_ttl: std::time::Duration,
    /// The underlay address others reach this node at (`None`: the first
    /// uplink's first IPv4 address).
    pub address: Option<Ipv4Addr>,
    /// `--cluster-routing`.
    pub routing: ferry_net::agent::Routing,
}

/// `--cluster-routing`: how members are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterRouting {
    /// Natively when on a subnet the underlay is connected to, else VXLAN.
    Auto,
    /// Natively only (containers keep the full MTU; members elsewhere are
    /// unreachable).
    Native,
    /// Always VXLAN.
    Vxlan,
}

impl From<ClusterRouting> for ferry_net::agent::Routing {
    fn from(r: ClusterRouting) -> Self {
        match r {
            ClusterRouting::Auto => Self::Auto,
            ClusterRouting::Native => Self::Native,
            ClusterRouting::Vxlan => Self::Vxlan,
        }
    }
}

/// `--cluster`: `etcd://HOST:PORT[,HOST:PORT...]`, or the path of a file
/// holding that (one line; `#` comments).
pub fn parse_cluster(value: &str) -> Result<Vec<String>, String> {
    let text = if value.starts_with('/') || value.starts_with('.') {
        let text = std::fs::read_to_string(value)
            .map_err(|e| format!("cannot read the cluster file {value}: {e}"))?;
        text.lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        value.to_owned()
    };
    let Some(list) = text.strip_prefix("etcd://") else {
        return Err(format!(
            "{text:?} is not etcd://HOST:PORT[,HOST:PORT...] (nor a file holding that)"
        ));
    };
    let mut endpoints = Vec::new();
    for member in list.split(',').map(str::trim) {
        let member = member.strip_prefix("etcd://").unwrap_or(member);
        let port_ok = member
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("etcd member {member:?} is not HOST:PORT"));
        }
        endpoints.push(format!("http://{member}"));
    }
    Ok(endpoints)
}

/// `--xdp-prefilter`: XDP on veth and virtio_net uplinks costs their GRO
/// and offloads (measured: a masqueraded download through a veth uplink
/// at 0.39x without the prefilter's speed), so `auto` attaches it only to
/// uplinks backed by other (physical) drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpPrefilter {
    Auto,
    On,
    Off,
}

impl XdpPrefilter {
    /// Whether `ifname` gets the prefilter.
    pub fn applies_to(self, ifname: &str) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => {
                let driver = std::fs::read_link(format!("/sys/class/net/{ifname}/device/driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
                // Virtual devices (veth, bridges) have no device directory.
                driver.is_some_and(|d| d != "virtio_net")
            }
        }
    }
}

/// The cgroup2 mount: /sys/fs/cgroup on a unified host, else the hybrid
/// layout's /sys/fs/cgroup/unified.
pub fn default_cgroup() -> PathBuf {
    let unified = PathBuf::from("/sys/fs/cgroup");
    let is_cgroup2 = nix::sys::statfs::statfs(&unified)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if is_cgroup2 {
        unified
    } else {
        unified.join("unified")
    }
}

/// `--metrics`: `IP:PORT`, or a bare `PORT` on loopback.
pub fn parse_metrics_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok((Ipv4Addr::LOCALHOST, port).into());
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is neither a port nor an IP:PORT address"))
}

/// Resolves a group name (or numeric gid) for the API socket.
pub fn parse_group(name: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(ConfigError::Group(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_address_defaults_to_loopback() {
        assert_eq!(
            parse_metrics_addr("9323").map(|a| a.to_string()),
            Ok("127.0.0.1:9323".to_owned())
        );
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9100").map(|a| a.to_string()),
            Ok("0.0.0.0:9100".to_owned())
        );
        assert!(parse_metrics_addr("reset").is_err());
    }

    #[test]
    fn cluster_endpoints_parse() {
        assert_eq!(
            parse_cluster("etcd://10.0.0.1:2379,h2:2379"),
            Ok(vec![
                "http://10.0.0.1:2379".to_owned(),
                "http://h2:2379".to_owned()
            ])
        );
        assert!(parse_cluster("http://10.0.0.1:2379").is_err());
        assert!(parse_cluster("etcd://10.0.0.1").is_err());
        assert!(parse_cluster("etcd://10.0.0.1:2379,:2379").is_err());
        assert!(parse_cluster("/no/such/cluster/file").is_err());
    }

    #[test]
    fn group_accepts_numbers_and_names() {
        assert_eq!(parse_group("0").expect("gid"), 0);
        assert_eq!(parse_group("root").expect("root group"), 0);
        assert!(parse_group("no-such-group-ferry").is_err());
    }
}
