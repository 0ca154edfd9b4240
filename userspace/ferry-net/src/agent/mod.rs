//! The network agent: gives a network namespace an interface on one of
//! ferry's networks (an endpoint), publishes ports to it, names it in the
//! embedded DNS, and takes it all apart again. It does not care who made
//! the namespace: ferry's runtime, a CNI runtime or Docker are all callers
//! of the same `attach`, `publish` and `detach`.
//!
//! Every step of an attach or a publish is recorded in a [`Partial`], so a
//! caller whose later step fails hands it to [`Agent::rollback`] and nothing
//! is left behind.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, BorrowedFd},
};

use ferry_common::{EP_MACVLAN, Endpoint, GATEWAY_V4, NETNS_CONTAINER, PortKey, PortTarget};
use tracing::warn;

mod cluster;
mod macvlan;
mod record;

pub use self::cluster::{Member, Routing, Underlay, mode_name};
use self::macvlan::Slave;
pub use self::record::{HOST_VETH_PREFIX, Link, NetworkRecord, is_host_veth, macs_for, port_key};
use crate::{
    datapath::{self, Datapath},
    dns,
    ipam::IpamError,
    link::{Mac, Netlink},
    netns::{self, NetNsGuard},
    network::{CreateSpec, Driver, NetworkDef, NetworkError, Networks},
    portmap::{self, Hold, HostPorts, PortMapping, PublishSpec, Reservation, ReserveError},
};

/// What went wrong, by the kind of answer the caller owes its own client.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// No address (or network) left to give.
    #[error("{0}")]
    Exhausted(String),
    /// A datapath map has no room left.
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<NetworkError> for AgentError {
    fn from(e: NetworkError) -> Self {
        use NetworkError as E;
        match &e {
            E::NotFound(_) => Self::NotFound(e.to_string()),
            E::Exists(_) | E::Overlap { .. } | E::Ipam(IpamError::InUse(_)) => {
                Self::Conflict(e.to_string())
            }
            E::Ipam(IpamError::Exhausted(_)) | E::PoolExhausted => Self::Exhausted(e.to_string()),
            E::Save { .. } | E::Load { .. } => Self::Internal(e.to_string()),
            _ => Self::Invalid(e.to_string()),
        }
    }
}

/// A datapath map without room for one more of `what` is the user's to
/// fix (remove some, or give the maps more room); other map errors are
/// ferry's.
fn map_full(e: datapath::DatapathError, what: &str, flag: &str) -> AgentError {
    match e {
        datapath::DatapathError::Full { .. } => AgentError::Full(format!(
            "{e}: no room for more {what}; remove some, or stop ferryd, run `ferryd reset` and \
             start it with a larger {flag}"
        )),
        e => AgentError::internal(e),
    }
}

/// Pieces of an attach or publish, undone in reverse by `rollback`.
#[derive(Default)]
pub struct Partial {
    ip: Option<Ipv4Addr>,
    host_ifindex: Option<u32>,
    host_ifname: Option<String>,
    ports: Vec<PortKey>,
    netns_cookie: Option<u64>,
    /// Names registered for the embedded DNS: (network, address).
    dns: Option<(String, Ipv4Addr)>,
    /// A macvlan endpoint's route and neighbour entry on its parent:
    /// (parent ifindex, address).
    parent_route: Option<(u32, Ipv4Addr)>,
    /// A macvlan slave made in the namespace: (netlink there, its name).
    slave: Option<(Netlink, String)>,
}

/// Where the endpoint's interface goes.
#[derive(Clone, Copy)]
pub enum Placement<'a> {
    /// Into this namespace, configured there (address, neighbour, route).
    Netns(BorrowedFd<'a>),
    /// Left on the host under its name, for the engine to move into its
    /// namespace and configure (Docker does, after Join).
    Host,
}

/// What an attach asks for.
pub struct AttachSpec<'a> {
    /// The owner's id (DNS table, port reservations).
    pub owner: &'a str,
    pub placement: Placement<'a>,
    pub network: &'a NetworkDef,
    /// A static address (`--ip`), else the network's next free one.
    pub ip: Option<Ipv4Addr>,
    /// `ip` is held already, by the engine's IPAM.
    pub ip_held: bool,
    /// A static MAC, else one derived from the address.
    pub mac: Option<Mac>,
    pub link: &'a Link,
}

/// Host ports one owner holds, and the name a conflict reports.
struct Held {
    name: String,
    ports: Vec<PortMapping>,
    reservations: Vec<Reservation>,
}

pub struct Agent {
    pub datapath: Datapath,
    pub networks: Networks,
    pub netlink: Netlink,
    /// Host ports held for each owner's publishes.
    held: HashMap<String, Held>,
    /// Names on each user-defined network, for the embedded DNS.
    pub dns_table: dns::Table,
    /// Each DNS-serving owner's server task.
    dns_tasks: HashMap<String, tokio::task::AbortHandle>,
    /// Where names that are not endpoints' are asked by default.
    dns_upstreams: Vec<SocketAddr>,
    /// The uplinks ferryd serves (set by the daemon): the interfaces a
    /// macvlan network may have as its parent.
    pub uplinks: Vec<String>,
    /// The MTU of containers' veths (set by the daemon; `None`: the
    /// kernel's default): lower in a cluster that may tunnel.
    pub mtu: Option<u32>,
}

impl Agent {
    pub fn new(
        datapath: Datapath,
        networks: Networks,
        netlink: Netlink,
        dns_upstreams: Vec<SocketAddr>,
    ) -> Self {
        Self {
            datapath,
            networks,
            netlink,
            held: HashMap::new(),
            dns_table: dns::Table::default(),
            dns_tasks: HashMap::new(),
            dns_upstreams,
            uplinks: Vec::new(),
            mtu: None,
        }
    }

    /// Creates a network and writes its policy into the datapath; nothing
    /// stays when either fails.
    pub async fn create_network(
        &mut self,
        spec: &CreateSpec<'_>,
        id: String,
        now: u64,
    ) -> Result<NetworkDef, AgentError> {
        let host_addrs = self
            .netlink
            .ipv4_addresses()
            .await
            .map_err(AgentError::internal)?;
        let def = self.networks.create(spec, id, now, &host_addrs)?;
        if let Err(e) = self.datapath.set_network(def.net_id, def.flags()) {
            let _ = self.networks.remove(&def.name);
            return Err(map_full(e, "networks", "--endpoint-max"));
        }
        if let Some(parent) = def.parent.clone()
            && let Err(e) = self.serve_parent(&parent).await
        {
            let _ = self.remove_network(&def.name).await;
            return Err(e);
        }
        Ok(def)
    }

    /// Removes a network (the caller checked that no endpoint is on it)
    /// and its policy; a macvlan parent no other network uses stops
    /// serving macvlan.
    pub async fn remove_network(&mut self, name: &str) -> Result<NetworkDef, AgentError> {
        let def = self.networks.remove(name)?;
        if let Err(e) = self.datapath.remove_network(def.net_id) {
            warn!(network = %def.name, %e, "cannot remove the network's policy");
        }
        if let Some(parent) = &def.parent
            && !self.parents().contains(parent)
        {
            let detached = match self.netlink.index_of(parent).await {
                Ok(Some(index)) => self
                    .datapath
                    .detach_macvlan_parent(parent, index)
                    .map_err(|e| e.to_string()),
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = detached {
                warn!(network = %def.name, %parent, %e, "cannot detach the macvlan parent");
            }
        }
        Ok(def)
    }

    /// Gives the namespace an address and a veth wired to the datapath.
    /// Everything made is recorded in `partial` for rollback.
    pub async fn attach(
        &mut self,
        spec: &AttachSpec<'_>,
        partial: &mut Partial,
    ) -> Result<NetworkRecord, AgentError> {
        let (network, link) = (spec.network, spec.link);
        let macvlan_ns = match (network.driver, spec.placement) {
            (Driver::Bridge, _) => None,
            (Driver::Macvlan, Placement::Netns(ns)) => Some(ns),
            (Driver::Macvlan, Placement::Host) => {
                return Err(AgentError::Invalid(format!(
                    "network {} is a macvlan network, which serves namespaces ferry configures \
                     itself (ferry's containers, CNI), not Docker's",
                    network.name
                )));
            }
        };
        let ip = match (spec.ip, spec.ip_held) {
            (Some(ip), true) => ip,
            _ => {
                let ip = self.networks.allocate(&network.name, spec.ip)?;
                partial.ip = Some(ip);
                ip
            }
        };
        let (derived_mac, host_mac) = macs_for(ip);
        let mac = spec.mac.unwrap_or(derived_mac);
        let host_ifname = link.host_ifname.clone();

        // The namespace's side, configured through a netlink socket opened
        // inside it. IPv6 is off there (and on the host side) because the
        // datapath forwards IPv4 only so far.
        let (inside, netns_cookie, peer_ns) = match spec.placement {
            Placement::Netns(ns) => {
                let (inside, cookie) = netlink_in(ns)?;
                (Some(inside), cookie, None)
            }
            Placement::Host => {
                let own = netns::open(std::path::Path::new("/proc/thread-self/ns/net"))
                    .map_err(AgentError::internal)?;
                (None, 0, Some(own))
            }
        };
        let peer_fd = match (&peer_ns, spec.placement) {
            (Some(own), _) => own.as_fd(),
            (None, Placement::Netns(ns)) => ns,
            (None, Placement::Host) => return Err(AgentError::internal("no namespace")),
        };
        let taken = match &inside {
            Some(inside) => inside.index_of(&link.ifname).await,
            None => self.netlink.index_of(&link.ifname).await,
        };
        if taken.map_err(AgentError::internal)?.is_some() {
            return Err(AgentError::Conflict(format!(
                "the namespace already has an interface {}",
                link.ifname
            )));
        }
        if link.first && inside.is_some() {
            partial.netns_cookie = Some(netns_cookie);
            self.datapath
                .add_netns(netns_cookie, NETNS_CONTAINER)
                .map_err(AgentError::internal)?;
        }
        if let (Some(ns), Some(inside)) = (macvlan_ns, &inside) {
            let slave = Slave {
                ip,
                mac,
                ns,
                inside: inside.clone(),
                netns_cookie,
            };
            return self.attach_macvlan(spec, slave, partial).await;
        }
        partial.host_ifname = Some(host_ifname.clone());
        let host_ifindex = self
            .netlink
            .create_veth(&host_ifname, host_mac, &link.ifname, mac, peer_fd, self.mtu)
            .await
            .map_err(AgentError::internal)?;
        partial.host_ifindex = Some(host_ifindex);
        netns::write_net_sysctl(&format!("ipv6/conf/{host_ifname}/disable_ipv6"), "1")
            .map_err(|e| AgentError::internal(format!("disabling IPv6 on {host_ifname}: {e}")))?;
        // bpf_fib_lookup honours the ingress device's forwarding switch. The
        // stack itself never forwards an endpoint's packet: from_container
        // decides every one (see lxc.rs `to_outside`).
        netns::write_net_sysctl(&format!("ipv4/conf/{host_ifname}/forwarding"), "1").map_err(
            |e| AgentError::internal(format!("enabling forwarding lookups on {host_ifname}: {e}")),
        )?;

        self.datapath
            .add_endpoint(
                ip,
                Endpoint {
                    ifindex: host_ifindex,
                    net_id: network.net_id,
                    mac,
                    host_mac,
                    // Given by the datapath.
                    stats: 0,
                    flags: 0,
                },
            )
            .map_err(|e| map_full(e, "endpoints", "--endpoint-max"))?;
        self.datapath
            .attach(&host_ifname)
            .map_err(AgentError::internal)?;

        self.netlink
            .set_up(host_ifindex)
            .await
            .map_err(AgentError::internal)?;
        self.netlink
            .add_permanent_neighbour(host_ifindex, ip, mac)
            .await
            .map_err(AgentError::internal)?;
        self.netlink
            .add_host_route(host_ifindex, ip)
            .await
            .map_err(AgentError::internal)?;

        let record = NetworkRecord {
            ip,
            mac,
            host_ifname,
            host_ifindex,
            host_mac,
            netns_cookie,
            network: network.name.clone(),
            aliases: Vec::new(),
            ifname: link.ifname.clone(),
            external_ipam: spec.ip_held,
            macvlan: false,
        };
        let Some(inside) = inside else {
            return Ok(record);
        };
        configure_inside(&inside, spec, ip, host_mac).await?;
        Ok(record)
    }

    /// Reserves the host ports of `specs` for `owner` (named `name` in a
    /// conflict) as `hold` says, and publishes them to `ip`. Everything made
    /// is recorded in `partial` for rollback.
    pub async fn publish(
        &mut self,
        owner: &str,
        name: &str,
        ip: Ipv4Addr,
        specs: &[PublishSpec],
        hold: Hold,
        partial: &mut Partial,
    ) -> Result<Vec<PortMapping>, AgentError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        // The host's addresses may have changed since the last publish.
        self.refresh_host_addrs()
            .await
            .map_err(AgentError::internal)?;
        let mut mappings = Vec::new();
        for spec in specs {
            let allocated = portmap::allocate(spec, hold, &|ip, port, proto| {
                self.published_by(ip, port, proto).is_some()
            })
            .map_err(|e| self.explain_conflict(e))?;
            for (mapping, reservation) in allocated {
                let key = port_key(&mapping);
                let target = PortTarget {
                    ip: ip.octets(),
                    port: mapping.container_port.to_be_bytes(),
                    pad: [0; 2],
                };
                self.datapath
                    .add_port(key, target)
                    .map_err(|e| map_full(e, "published ports", "--port-max"))?;
                partial.ports.push(key);
                let held = self.held.entry(owner.to_owned()).or_insert_with(|| Held {
                    name: name.to_owned(),
                    ports: Vec::new(),
                    reservations: Vec::new(),
                });
                held.ports.push(mapping);
                held.reservations.push(reservation);
                mappings.push(mapping);
            }
        }
        Ok(mappings)
    }

    /// The endpoint that publishes `port`/`proto` where `ip` would (the
    /// same address, or either is every address), by its name.
    fn published_by(&self, ip: Ipv4Addr, port: u16, proto: portmap::Proto) -> Option<&str> {
        self.held
            .values()
            .find(|h| {
                h.ports.iter().any(|m| {
                    m.host_port == port
                        && m.proto == proto
                        && (m.host_ip.is_none() || ip.is_unspecified() || m.host_ip == Some(ip))
                })
            })
            .map(|h| h.name.as_str())
    }

    /// A port in use because another endpoint publishes it says whose.
    fn explain_conflict(&self, err: ReserveError) -> AgentError {
        if let ReserveError::InUse { ip, port, proto } = &err
            && let Some(owner) = self.published_by(*ip, *port, *proto)
        {
            return AgentError::Conflict(format!(
                "{proto} port {port} is already published by {owner}"
            ));
        }
        AgentError::Conflict(err.to_string())
    }

    /// Holds the ports of an endpoint taken over from an earlier ferryd, as
    /// `hold` says.
    pub fn adopt_ports(&mut self, owner: &str, name: &str, ports: &[PortMapping], hold: Hold) {
        for mapping in ports {
            let spec = PublishSpec {
                host_ip: mapping.host_ip,
                host_ports: HostPorts::Range(mapping.host_port, mapping.host_port),
                container_ports: (mapping.container_port, mapping.container_port),
                proto: mapping.proto,
            };
            match portmap::allocate(&spec, hold, &|_, _, _| false) {
                Ok(got) => {
                    let held = self.held.entry(owner.to_owned()).or_insert_with(|| Held {
                        name: name.to_owned(),
                        ports: Vec::new(),
                        reservations: Vec::new(),
                    });
                    for (m, r) in got {
                        held.ports.push(m);
                        held.reservations.push(r);
                    }
                }
                Err(e) => warn!(%owner, %e, "cannot hold an adopted port"),
            }
        }
    }

    /// Unpublishes `ports` and lets go of every host port `owner` holds.
    pub fn unpublish(&mut self, owner: &str, ports: &[PortMapping]) {
        for mapping in ports {
            if let Err(e) = self.datapath.remove_port(&port_key(mapping)) {
                warn!(%owner, %e, "cannot unpublish {mapping}");
            }
        }
        self.held.remove(owner);
    }

    /// Re-attaches an endpoint recorded by an earlier ferryd to this one's
    /// programs, holds its address, and publishes it to the datapath
    /// again: in place (same counters) when the pinned map still holds
    /// it, anew when this build made the map anew (another layout).
    pub fn adopt(&mut self, owner: &str, net: &NetworkRecord) {
        if let Err(e) = self.networks.reserve(&net.network, net.ip) {
            warn!(%owner, %e, "address conflict while adopting");
        }
        match self.networks.find(&net.network) {
            Ok(def) => {
                let endpoint = Endpoint {
                    ifindex: net.host_ifindex,
                    net_id: def.net_id,
                    mac: net.mac,
                    host_mac: net.host_mac,
                    // Kept or given by the datapath.
                    stats: 0,
                    flags: if net.macvlan { EP_MACVLAN } else { 0 },
                };
                if let Err(e) = self.datapath.add_endpoint(net.ip, endpoint) {
                    warn!(%owner, %e, "cannot publish the endpoint again");
                }
            }
            Err(e) => warn!(%owner, %e, "an adopted endpoint's network is gone"),
        }
        // A macvlan endpoint's parent is served once for all its endpoints.
        if !net.macvlan
            && let Err(e) = self.datapath.attach(&net.host_ifname)
        {
            warn!(%owner, %e, "cannot re-attach the datapath");
        }
    }

    /// Takes one attachment apart: DNS names, endpoint, socket hooks (for
    /// the first), veth, address. Idempotent.
    pub async fn detach(&mut self, owner: &str, net: &NetworkRecord, first: bool) {
        self.dns_table.remove(owner, &net.network, net.ip);
        if let Err(e) = self.datapath.remove_endpoint(net.ip) {
            warn!(%owner, %e, "cannot remove endpoint");
        }
        if first
            && net.netns_cookie != 0
            && let Err(e) = self.datapath.remove_netns(net.netns_cookie)
        {
            warn!(%owner, %e, "cannot forget the namespace");
        }
        if net.macvlan {
            // The slave goes with its namespace; the host's entries for it
            // on the parent are the host's to remove.
            self.forget_parent_route(owner, net.host_ifindex, net.ip)
                .await;
            if !net.external_ipam {
                self.networks.release(net.ip);
            }
            return;
        }
        self.datapath.forget(&net.host_ifname);
        // The veth normally dies with its namespace, but that happens
        // asynchronously in the kernel (and a namespace kept open by its
        // engine does not die at all): delete it now, by name, so that it
        // is gone when the caller returns.
        match self.netlink.index_of(&net.host_ifname).await {
            Ok(Some(index)) => {
                if let Err(e) = self.netlink.delete(index).await {
                    warn!(%owner, %e, "cannot delete veth");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(%owner, %e, "cannot look up veth"),
        }
        if !net.external_ipam {
            self.networks.release(net.ip);
        }
    }

    /// Undoes whatever an attach and publish got to, every step attempted.
    pub async fn rollback(&mut self, owner: &str, partial: Partial) {
        for key in &partial.ports {
            if let Err(e) = self.datapath.remove_port(key) {
                warn!(%owner, %e, "rollback: cannot unpublish a port");
            }
        }
        // Only the ports this attempt took: a failed connect of a running
        // container keeps the ports it published at its start.
        if let Some(held) = self.held.get_mut(owner) {
            let mut at = 0;
            while at < held.ports.len() {
                if partial.ports.contains(&port_key(&held.ports[at])) {
                    held.ports.swap_remove(at);
                    held.reservations.swap_remove(at);
                } else {
                    at += 1;
                }
            }
            if held.ports.is_empty() {
                self.held.remove(owner);
            }
        }
        if let Some(cookie) = partial.netns_cookie
            && let Err(e) = self.datapath.remove_netns(cookie)
        {
            warn!(%owner, %e, "rollback: cannot forget the namespace");
        }
        if let Some((parent, ip)) = partial.parent_route {
            self.forget_parent_route(owner, parent, ip).await;
        }
        if let Some((inside, name)) = &partial.slave {
            match inside.index_of(name).await {
                Ok(Some(index)) => {
                    if let Err(e) = inside.delete(index).await {
                        warn!(%owner, %e, "rollback: cannot delete the macvlan slave");
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(%owner, %e, "rollback: cannot look up the macvlan slave"),
            }
        }
        if let Some(ifname) = &partial.host_ifname {
            self.datapath.forget(ifname);
        }
        if let Some(index) = partial.host_ifindex
            && let Err(e) = self.netlink.delete(index).await
        {
            warn!(%owner, %e, "rollback: cannot delete veth");
        }
        if let Some((network, ip)) = &partial.dns {
            self.stop_dns(owner);
            self.dns_table.remove(owner, network, *ip);
        }
        if let Some(ip) = partial.ip {
            if let Err(e) = self.datapath.remove_endpoint(ip) {
                warn!(%owner, %e, "rollback: cannot remove endpoint");
            }
            self.networks.release(ip);
        }
    }

    /// Registers `names` of `owner` on the network of `net`, for the
    /// embedded DNS of that network's endpoints. Nothing for the default
    /// network (as Docker's). Recorded in `partial`.
    pub fn join_dns(
        &self,
        owner: &str,
        names: &[String],
        net: &NetworkRecord,
        partial: Option<&mut Partial>,
    ) {
        let Ok(def) = self.networks.find(&net.network) else {
            return;
        };
        if def.is_default() {
            return;
        }
        let mut all = names.to_vec();
        all.extend(net.aliases.iter().cloned());
        self.dns_table
            .add(owner, &net.network, def.internal, &all, net.ip);
        if let Some(partial) = partial {
            partial.dns = Some((net.network.clone(), net.ip));
        }
    }

    /// Serves 127.0.0.11:53 in `netns` for `owner`: the names of all its
    /// networks, the rest forwarded to `dns` (else the default upstreams).
    pub fn serve_dns(
        &mut self,
        owner: &str,
        netns: std::fs::File,
        dns: &[String],
    ) -> Result<(), String> {
        let socket = dns::bind_in(netns).map_err(|e| format!("binding 127.0.0.11:53: {e}"))?;
        let upstreams = if dns.is_empty() {
            self.default_upstreams()
        } else {
            dns.iter()
                .filter_map(|d| d.parse::<Ipv4Addr>().ok())
                .map(|ip| SocketAddr::from((ip, 53)))
                .collect()
        };
        let task = tokio::spawn(dns::serve(
            socket,
            self.dns_table.clone(),
            owner.to_owned(),
            upstreams,
        ));
        if let Some(old) = self.dns_tasks.insert(owner.to_owned(), task.abort_handle()) {
            old.abort();
        }
        Ok(())
    }

    /// Stops serving the owner's DNS (its socket closes with the task).
    pub fn stop_dns(&mut self, owner: &str) {
        if let Some(task) = self.dns_tasks.remove(owner) {
            task.abort();
        }
    }

    /// `--dns-upstream`, else the host's resolv.conf nameservers.
    fn default_upstreams(&self) -> Vec<SocketAddr> {
        if self.dns_upstreams.is_empty() {
            dns::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            self.dns_upstreams.clone()
        }
    }

    /// Syncs `host_addrs` with this namespace's IPv4 addresses. Loopback
    /// addresses are left out: nothing outside the host can reach them, and
    /// in a namespace 127.0.0.1 is its own (the socket hooks treat loopback
    /// separately, for the host's namespace only).
    pub async fn refresh_host_addrs(&mut self) -> Result<(), AgentError> {
        let mut addrs = self
            .netlink
            .ipv4_addresses()
            .await
            .map_err(AgentError::internal)?;
        addrs.retain(|a| !a.is_loopback());
        self.datapath
            .set_host_addrs(&addrs)
            .map_err(AgentError::internal)?;
        self.refresh_parents().await
    }

    /// Removes host veths and datapath entries of no live endpoint (what a
    /// crash in the middle of an attach or a detach leaves), logging each.
    pub async fn prune(&mut self, nets: &[&NetworkRecord], ports: &[PortKey], host_cookie: u64) {
        let live = datapath::Live {
            ips: nets.iter().map(|n| n.ip).collect(),
            ports: ports.to_vec(),
            netns: nets
                .iter()
                .map(|n| n.netns_cookie)
                .chain([host_cookie])
                .collect(),
            networks: self
                .networks
                .list()
                .filter(|d| !d.is_default())
                .map(|d| d.net_id)
                .collect(),
        };
        let veths: Vec<&str> = nets.iter().map(|n| n.host_ifname.as_str()).collect();
        match self.netlink.links().await {
            Ok(links) => {
                for (index, name) in links {
                    if !is_host_veth(&name) || veths.contains(&name.as_str()) {
                        continue;
                    }
                    match self.netlink.delete(index).await {
                        Ok(()) => warn!(veth = %name, "removed a veth of no endpoint"),
                        Err(e) => warn!(veth = %name, %e, "cannot remove a veth of no endpoint"),
                    }
                }
            }
            Err(e) => warn!(%e, "cannot list interfaces to find leftover veths"),
        }
        match self.datapath.prune(&live) {
            Ok(removed) => {
                for entry in removed {
                    warn!(%entry, "removed a datapath entry of no endpoint");
                }
            }
            Err(e) => warn!(%e, "cannot check the datapath maps for leftover entries"),
        }
    }
}

/// The namespace's side of an attach, through `inside`: loopback and the
/// interface up, the address, the gateway's permanent neighbour entry
/// (`gateway_mac`: the host-side veth's, or a macvlan parent's), and the
/// route: the first interface has the default route, a connected one
/// routes its network's subnet, from its own address.
async fn configure_inside(
    inside: &Netlink,
    spec: &AttachSpec<'_>,
    ip: Ipv4Addr,
    gateway_mac: Mac,
) -> Result<(), AgentError> {
    let (network, link) = (spec.network, spec.link);
    let gateway = Ipv4Addr::from(GATEWAY_V4);
    let lo = inside.index_of("lo").await.map_err(AgentError::internal)?;
    let eth = inside
        .index_of(&link.ifname)
        .await
        .map_err(AgentError::internal)?;
    let (Some(lo), Some(eth)) = (lo, eth) else {
        return Err(AgentError::internal(
            "namespace interfaces missing after their creation",
        ));
    };
    inside.set_up(lo).await.map_err(AgentError::internal)?;
    inside.set_up(eth).await.map_err(AgentError::internal)?;
    inside
        .add_address(eth, ip, 32)
        .await
        .map_err(AgentError::internal)?;
    inside
        .add_permanent_neighbour(eth, gateway, gateway_mac)
        .await
        .map_err(AgentError::internal)?;
    let subnet = (!link.first).then_some((network.subnet, ip));
    inside
        .add_route_onlink(eth, subnet, gateway)
        .await
        .map_err(AgentError::internal)
}

/// A netlink socket inside `ns`, and that namespace's cookie. IPv6 is
/// switched off there first.
pub fn netlink_in(ns: BorrowedFd<'_>) -> Result<(Netlink, u64), AgentError> {
    let _guard = NetNsGuard::enter(ns.as_fd()).map_err(AgentError::internal)?;
    for key in [
        "ipv6/conf/all/disable_ipv6",
        "ipv6/conf/default/disable_ipv6",
    ] {
        netns::write_net_sysctl(key, "1")
            .map_err(|e| AgentError::internal(format!("sysctl {key}: {e}")))?;
    }
    let cookie =
        netns::current_cookie().map_err(|e| AgentError::internal(format!("netns cookie: {e}")))?;
    Ok((Netlink::current().map_err(AgentError::internal)?, cookie))
}
