//! The API's JSON bodies, shared with the `ferry` client: requests, and
//! what ferryd answers about containers, networks and the datapath.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    link::mac_to_string,
    portmap::PortMapping,
    state::{ContainerRecord, Status},
};

/// `POST /containers/run`: create and start a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Publish specs as `docker run -p` takes them.
    #[serde(default)]
    pub publish: Vec<String>,
    /// The command; with an image, its arguments (empty: the image's Cmd).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// An image of the store to run; empty: the host's root (or
    /// `HostConfig.Rootfs`).
    #[serde(default)]
    pub image: String,
    /// `--entrypoint`: replaces the image's (and drops its Cmd).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `--user` (default: the image's `User`, or root).
    #[serde(default)]
    pub user: String,
    /// The workload's working directory (default: the image's, or `/`).
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub host_config: HostConfig,
    /// The container's address and aliases on its network (user-defined
    /// networks only; Docker's `EndpointsConfig`).
    #[serde(default)]
    pub endpoint: EndpointConfig,
    /// `-t`: a terminal for stdin, stdout and stderr.
    #[serde(default)]
    pub tty: bool,
    /// `-i`: stdin open for `POST /containers/{id}/attach`.
    #[serde(default)]
    pub open_stdin: bool,
    /// The terminal's initial size: rows, columns (Docker's `ConsoleSize`).
    #[serde(default)]
    pub console_size: Option<[u16; 2]>,
}

/// `--ip` and `--network-alias`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointConfig {
    #[serde(default, rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `POST /networks/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreate {
    pub name: String,
    /// CIDR; empty: a free /24.
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub internal: bool,
    /// Docker's driver name: empty or `bridge` (veths), `macvlan`.
    #[serde(default)]
    pub driver: String,
    /// Driver options: `com.docker.network.bridge.enable_icc`; for
    /// macvlan `parent` and `macvlan_mode`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `POST /networks/{id}/connect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkConnect {
    pub container: String,
    #[serde(default)]
    pub endpoint_config: EndpointConfig,
}

/// `POST /networks/{id}/disconnect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDisconnect {
    pub container: String,
}

/// `ferry network inspect` / `GET /networks/{id}`, in Docker's shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkJson {
    pub name: String,
    pub id: String,
    pub created: u64,
    pub driver: String,
    pub internal: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamJson,
    pub options: BTreeMap<String, String>,
    /// Running containers on it, by ID.
    pub containers: BTreeMap<String, NetworkMember>,
    /// ferry's addition: the datapath's number for the network.
    pub net_id: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamJson {
    pub config: Vec<IpamConfigJson>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigJson {
    pub subnet: String,
    pub gateway: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkMember {
    pub name: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    pub mac_address: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// One endpoint on a network: a running container's attachment or an
/// endpoint of another engine.
pub struct Member<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub net: &'a crate::state::NetworkRecord,
}

impl<'a> Member<'a> {
    pub fn of(id: &'a str, name: &'a str, net: &'a crate::state::NetworkRecord) -> Self {
        Self { id, name, net }
    }
}

impl NetworkJson {
    /// A network and its `members`.
    pub fn of(def: &crate::network::NetworkDef, members: &[Member<'_>]) -> Self {
        let gateway = std::net::Ipv4Addr::from(ferry_common::GATEWAY_V4).to_string();
        Self {
            name: def.name.clone(),
            id: def.id.clone(),
            created: def.created,
            driver: match def.driver {
                crate::network::Driver::Bridge => "ferry".into(),
                crate::network::Driver::Macvlan => "macvlan".into(),
            },
            internal: def.internal,
            ipam: IpamJson {
                config: vec![IpamConfigJson {
                    subnet: def.subnet.to_string(),
                    gateway,
                }],
            },
            options: std::iter::once((crate::network::OPT_ICC.to_owned(), def.icc.to_string()))
                .chain(
                    def.parent
                        .iter()
                        .map(|p| (crate::network::OPT_PARENT.to_owned(), p.clone())),
                )
                .collect(),
            containers: members
                .iter()
                .map(|m| {
                    (
                        m.id.to_owned(),
                        NetworkMember {
                            name: m.name.to_owned(),
                            ipv4_address: format!("{}/{}", m.net.ip, def.subnet.prefix_len()),
                            mac_address: mac_to_string(&m.net.mac),
                            aliases: m.net.aliases.clone(),
                        },
                    )
                })
                .collect(),
            net_id: def.net_id,
        }
    }
}

/// How the container is run: limits, filesystem, network, clean-up
/// (Docker's `HostConfig`, where ferry supports a field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    #[serde(flatten)]
    pub resources: crate::cgroup::Resources,
    /// `HOST:CONTAINER[:ro]` bind mounts.
    #[serde(default)]
    pub binds: Vec<String>,
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Remove the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// `bridge` (default), `host`, `none` or `container:<name|id>`.
    #[serde(default)]
    pub network_mode: String,
    /// ferry's addition: a root filesystem directory to run instead of the
    /// overlay of the host's root (`host`, or empty without an image: that
    /// overlay).
    #[serde(default)]
    pub rootfs: String,
    /// `-P`: publish every port the image exposes on a free host port.
    #[serde(default)]
    pub publish_all_ports: bool,
    /// `--security-opt`: `seccomp=unconfined`, `seccomp=<profile JSON>` (the
    /// CLI reads a FILE into it, as Docker's does), `no-new-privileges`.
    #[serde(default)]
    pub security_opt: Vec<String>,
    /// `--cap-add`, `--cap-drop` (names, `ALL`), `--privileged`.
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub privileged: bool,
    /// `--dns`: resolvers for the container (on a user-defined network,
    /// the ones its embedded DNS forwards to).
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--add-host NAME:IP` lines for the container's /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
}

/// A registry's credentials: `POST /auth` checks them, `POST /images/pull`
/// takes them as its body (Docker's `AuthConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// `host[:port]`, or `docker.io`.
    pub server_address: String,
}

/// `POST /containers/{id}/exec`: a command to run in a running container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// Added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default: the container's working directory.
    #[serde(default)]
    pub working_dir: String,
    /// `-t`: a terminal (the request must be an upgrade, see the API).
    #[serde(default)]
    pub tty: bool,
    /// `-i`: the client's stdin (the request must be an upgrade).
    #[serde(default)]
    pub attach_stdin: bool,
    /// The terminal's initial size: rows, columns.
    #[serde(default)]
    pub console_size: Option<[u16; 2]>,
}

/// One host binding of a published port (Docker's `PortBinding`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub pid: u32,
    pub exit_code: i32,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub finished_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub hostname: String,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// The image as it was named; empty for the host's root and `--rootfs`.
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub stop_signal: String,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    pub gateway: String,
    pub mac_address: String,
    pub networks: BTreeMap<String, EndpointSettings>,
    /// `"80/tcp" -> [{HostIp, HostPort}]`, as Docker shows published ports.
    pub ports: BTreeMap<String, Vec<PortBinding>>,
}

/// What ferry adds to Docker's inspect shape: the host side of the wiring.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FerrySettings {
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    pub host_veth_mac: String,
    pub monitor_pid: u32,
    /// The datapath programs on the host veth, e.g. `from_container (tc ingress)`.
    #[serde(default)]
    pub programs: Vec<String>,
    /// The container's datapath counters.
    #[serde(default)]
    pub counters: NetCounters,
    /// Traffic through the uplink of each published port, by
    /// `hostIP:hostPort/proto` (rx: to the container, tx: its replies).
    #[serde(default)]
    pub port_counters: BTreeMap<String, NetCounters>,
}

/// Packets and bytes a container sent (tx) and received (rx), counted by
/// the datapath.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl From<ferry_common::EndpointStats> for NetCounters {
    fn from(s: ferry_common::EndpointStats) -> Self {
        Self {
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
        }
    }
}

/// `ferry inspect` / `GET /containers/{id}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerJson {
    pub id: String,
    pub name: String,
    pub created: u64,
    pub state: ContainerState,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub network_settings: NetworkSettings,
    pub ferry: FerrySettings,
}

impl From<&ContainerRecord> for ContainerJson {
    fn from(r: &ContainerRecord) -> Self {
        let gateway = std::net::Ipv4Addr::from(ferry_common::GATEWAY_V4).to_string();
        let (network_settings, ferry) = match &r.network {
            Some(n) => {
                let endpoint = |n: &crate::state::NetworkRecord| EndpointSettings {
                    // Filled in by the daemon, which knows the networks.
                    network_id: String::new(),
                    aliases: n.aliases.clone(),
                    ip_address: n.ip.to_string(),
                    ip_prefix_len: 32,
                    gateway: gateway.clone(),
                    mac_address: mac_to_string(&n.mac),
                };
                (
                    NetworkSettings {
                        ip_address: n.ip.to_string(),
                        gateway: gateway.clone(),
                        mac_address: mac_to_string(&n.mac),
                        networks: r
                            .attachments()
                            .map(|a| (a.network.clone(), endpoint(a)))
                            .collect(),
                        ports: port_bindings(&r.ports),
                    },
                    FerrySettings {
                        host_veth: n.host_ifname.clone(),
                        host_veth_ifindex: n.host_ifindex,
                        host_veth_mac: mac_to_string(&n.host_mac),
                        ..FerrySettings::default()
                    },
                )
            }
            None => (NetworkSettings::default(), FerrySettings::default()),
        };
        let ferry = FerrySettings {
            monitor_pid: r.monitor_pid.unwrap_or(0),
            ..ferry
        };
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            created: r.created,
            state: ContainerState {
                status: r.status.as_str().to_owned(),
                running: r.status == Status::Running,
                pid: r.pid.unwrap_or(0),
                exit_code: r.exit_code.unwrap_or(0),
                oom_killed: r.oom_killed,
                finished_at: r.finished.unwrap_or(0),
            },
            config: ContainerConfig {
                hostname: r.hostname.clone(),
                env: r.env.clone(),
                cmd: r.cmd.clone(),
                working_dir: r.working_dir.clone(),
                image: r.image.clone(),
                user: r.user.clone(),
                stop_signal: r.stop_signal.clone(),
                tty: r.tty,
                open_stdin: r.open_stdin,
            },
            host_config: r.host_config.clone(),
            network_settings,
            ferry,
        }
    }
}

fn port_bindings(ports: &[PortMapping]) -> BTreeMap<String, Vec<PortBinding>> {
    let mut out: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    for m in ports {
        out.entry(format!("{}/{}", m.container_port, m.proto))
            .or_default()
            .push(PortBinding {
                host_ip: m
                    .host_ip
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
                    .to_string(),
                host_port: m.host_port.to_string(),
            });
    }
    out
}

/// `GET /containers/{id}/stats`: datapath counters and cgroup usage of
/// one container, read at `read_ns` (CLOCK_MONOTONIC nanoseconds), so that
/// two samples give a CPU percentage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stats {
    #[serde(flatten)]
    pub net: NetCounters,
    #[serde(flatten)]
    pub usage: crate::cgroup::Usage,
    pub read_ns: u64,
}

/// `POST /containers/{id}/wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    pub status_code: i32,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
}

/// `GET /cluster`: this node and the other members as it sees them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterJson {
    pub node: String,
    pub endpoints: Vec<String>,
    /// Whether etcd answered the last call.
    pub connected: bool,
    pub error: Option<String>,
    /// Seconds since etcd last answered.
    pub last_contact_secs: Option<u64>,
    /// This node first, then the others by name.
    pub members: Vec<MemberJson>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemberJson {
    pub name: String,
    pub block: String,
    pub address: String,
    /// `self`, `native` (same segment: routed as is) or `unreachable`.
    pub mode: String,
    /// Seconds the member's lease has left, as etcd counts them.
    pub lease_ttl: Option<i64>,
}

/// `GET /datapath`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatapathJson {
    pub pin_dir: String,
    pub conntrack: ConntrackJson,
    /// Whether the programs log drops and new flows (`ferry debug datapath`).
    #[serde(default)]
    pub debug_log: bool,
    pub endpoints: usize,
    pub programs: Vec<String>,
    /// Where each program is attached.
    pub attachments: Vec<AttachmentJson>,
    /// Fill level of every map.
    pub maps: Vec<MapJson>,
    /// Drop counters by reason name.
    pub drops: BTreeMap<String, u64>,
}

/// Conntrack entries now, and since the maps were created. Two tables:
/// `ct_new` (flows not yet assured, an LRU map) and `ct` (assured flows,
/// never evicted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConntrackJson {
    /// Entries in both tables (two per flow).
    pub entries: u64,
    /// Of which assured (`ct`).
    pub assured: u64,
    /// Entries that came into `ct_new`: new flows, and flows that began to
    /// close.
    pub created: u64,
    /// Entries moved into `ct` when their flow was assured.
    pub promoted: u64,
    /// Entries ferryd removed (GC, flush), both tables.
    pub removed: u64,
    /// Entries evicted, both tables.
    pub evicted: u64,
    /// Evicted from `ct_new`: half-open, unanswered or closing flows.
    pub evicted_unassured: u64,
    /// Evicted from `ct`: none by design (a hash map evicts nothing).
    pub evicted_assured: u64,
    /// Promotions refused because `ct` was full (those flows stayed in
    /// `ct_new`).
    pub assured_full: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachmentJson {
    /// Interface, or cgroup directory for the socket hooks.
    pub target: String,
    pub program: String,
    /// `tc ingress`, `tc egress`, `xdp`, `cgroup`.
    pub hook: String,
    /// For XDP, as the kernel reports it: `native`, `generic`, ...
    #[serde(default)]
    pub mode: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MapJson {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub entries: usize,
    pub capacity: u32,
}

pub use ferry_api::ErrorBody;

/// `GET /images/json`: one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub repo_tags: Vec<String>,
    /// When it was built (RFC 3339, from its config).
    pub created: String,
    pub size: u64,
    /// Containers (running or not) that use it.
    pub containers: usize,
}

/// `POST /containers/prune`, `POST /images/prune`: what went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PruneReport {
    #[serde(default)]
    pub containers_deleted: Vec<String>,
    #[serde(default)]
    pub images_deleted: Vec<ImageDeleted>,
    /// Bytes freed on disk.
    pub space_reclaimed: u64,
}

/// `GET /system/df`: what images and containers take on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SystemDf {
    /// Every unpacked layer once, however many images share it.
    pub layers_size: u64,
    /// The part of it no container's image uses.
    pub layers_reclaimable: u64,
    pub images: Vec<ImageSummary>,
    pub containers: Vec<ContainerDf>,
}

/// One container in `SystemDf`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerDf {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    /// What it wrote to its root (its overlay's upper directory).
    pub size_rw: u64,
}

/// `GET /images/inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub created: String,
    pub size: u64,
    pub architecture: String,
    pub os: String,
    pub config: ferry_image::RunConfig,
    /// Layer diff_ids, the lowest first.
    pub layers: Vec<String>,
}

/// What `DELETE /images` did, line by line as Docker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDeleted {
    pub untagged: Option<String>,
    pub deleted: Option<String>,
}

/// `POST /images/save`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSave {
    pub names: Vec<String>,
}
