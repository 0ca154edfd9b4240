//! macvlan networks: uplinks serving as parents (`uplink_egress` on their
//! egress), and attaching a namespace with a slave of the parent instead of
//! a veth (docs/datapath.md "macvlan networks").

use std::{net::Ipv4Addr, os::fd::BorrowedFd};

use ferry_common::{EP_MACVLAN, Endpoint};
use tracing::{info, warn};

use super::{Agent, AgentError, AttachSpec, NetworkRecord, Partial, configure_inside, map_full};
use crate::link::{Mac, Netlink};

/// A macvlan attach's pieces made before it branches off.
pub(super) struct Slave<'a> {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub ns: BorrowedFd<'a>,
    pub inside: Netlink,
    pub netns_cookie: u64,
}

impl Agent {
    /// Makes uplink `parent` serve macvlan containers (`uplink_egress` on
    /// its egress). Only an uplink qualifies: its ingress has to carry
    /// `uplink_ingress` already.
    pub async fn serve_parent(&mut self, parent: &str) -> Result<(), AgentError> {
        if !self.uplinks.iter().any(|u| u == parent) {
            return Err(AgentError::Invalid(format!(
                "macvlan parent {parent} is not one of ferryd's uplinks ({}); start ferryd with \
                 --uplink {parent}",
                self.uplinks.join(", ")
            )));
        }
        let (index, mac) = self.parent_link(parent).await?;
        let addr = self.parent_address(index).await?;
        self.datapath
            .attach_macvlan_parent(parent, index, mac, addr)
            .map_err(AgentError::internal)
    }

    /// Serves every macvlan network's parent (at start). A parent that is
    /// gone or no uplink any more leaves its networks' containers
    /// unreachable, not ferryd unable to start.
    pub async fn serve_parents(&mut self) {
        for parent in self.parents() {
            match self.serve_parent(&parent).await {
                Ok(()) => info!(%parent, "macvlan networks served on this uplink"),
                Err(e) => warn!(%parent, %e, "cannot serve this uplink's macvlan networks"),
            }
        }
    }

    /// The uplinks macvlan networks have as their parent.
    pub(super) fn parents(&self) -> std::collections::BTreeSet<String> {
        self.networks
            .list()
            .filter_map(|d| d.parent.clone())
            .collect()
    }

    /// The address macvlan containers of uplink `index` are masqueraded
    /// to: its primary IPv4 address.
    async fn parent_address(&self, index: u32) -> Result<Option<Ipv4Addr>, AgentError> {
        let addrs = self
            .netlink
            .ipv4_addresses_of(Some(index))
            .await
            .map_err(AgentError::internal)?;
        Ok(addrs.into_iter().find(|a| !a.is_loopback()))
    }

    /// Follows the served macvlan parents' addresses (after an address
    /// event).
    pub(super) async fn refresh_parents(&mut self) -> Result<(), AgentError> {
        for parent in self.parents() {
            let Ok((index, mac)) = self.parent_link(&parent).await else {
                continue;
            };
            if !self.uplinks.contains(&parent) {
                continue;
            }
            let addr = self.parent_address(index).await?;
            self.datapath
                .set_macvlan_parent(index, mac, addr)
                .map_err(AgentError::internal)?;
        }
        Ok(())
    }

    /// The ifindex and MAC of macvlan parent `parent`.
    async fn parent_link(&self, parent: &str) -> Result<(u32, Mac), AgentError> {
        let gone = || AgentError::Invalid(format!("macvlan parent {parent} does not exist"));
        let index = self
            .netlink
            .index_of(parent)
            .await
            .map_err(AgentError::internal)?
            .ok_or_else(gone)?;
        let mac = self
            .netlink
            .mac_of(index)
            .await
            .map_err(AgentError::internal)?
            .ok_or_else(gone)?;
        Ok((index, mac))
    }

    /// The rest of an attach to a macvlan network: a slave of the parent in
    /// the namespace, the endpoint (reached through the parent), and the
    /// host's route and neighbour entry for it on the parent.
    pub(super) async fn attach_macvlan(
        &mut self,
        spec: &AttachSpec<'_>,
        slave: Slave<'_>,
        partial: &mut Partial,
    ) -> Result<NetworkRecord, AgentError> {
        let (network, link) = (spec.network, spec.link);
        let Slave {
            ip,
            mac,
            ns,
            inside,
            netns_cookie,
        } = slave;
        let parent = network.parent.as_deref().ok_or_else(|| {
            AgentError::internal(format!("macvlan network {} has no parent", network.name))
        })?;
        let (parent_index, parent_mac) = self.parent_link(parent).await?;
        partial.slave = Some((inside.clone(), link.ifname.clone()));
        self.netlink
            .create_macvlan(parent_index, &link.ifname, mac, ns)
            .await
            .map_err(AgentError::internal)?;
        self.datapath
            .add_endpoint(
                ip,
                Endpoint {
                    ifindex: parent_index,
                    net_id: network.net_id,
                    mac,
                    host_mac: parent_mac,
                    stats: 0,
                    flags: EP_MACVLAN,
                },
            )
            .map_err(|e| map_full(e, "endpoints", "--endpoint-max"))?;
        // The host reaches the container through the parent's egress,
        // where `uplink_egress` turns the packet back into its ingress; the
        // neighbour entry keeps the host from asking the wire for it.
        partial.parent_route = Some((parent_index, ip));
        self.netlink
            .add_permanent_neighbour(parent_index, ip, mac)
            .await
            .map_err(AgentError::internal)?;
        self.netlink
            .add_host_route(parent_index, ip)
            .await
            .map_err(AgentError::internal)?;
        configure_inside(&inside, spec, ip, parent_mac).await?;
        Ok(NetworkRecord {
            ip,
            mac,
            host_ifname: parent.to_owned(),
            host_ifindex: parent_index,
            host_mac: parent_mac,
            netns_cookie,
            network: network.name.clone(),
            aliases: Vec::new(),
            ifname: link.ifname.clone(),
            external_ipam: spec.ip_held,
            macvlan: true,
        })
    }

    /// Removes the route and neighbour entry of macvlan endpoint `ip` on
    /// its parent.
    pub(super) async fn forget_parent_route(&self, owner: &str, parent: u32, ip: Ipv4Addr) {
        if let Err(e) = self.netlink.delete_host_route(parent, ip).await {
            warn!(%owner, %e, "cannot delete the route to a macvlan endpoint");
        }
        if let Err(e) = self.netlink.delete_neighbour(parent, ip).await {
            warn!(%owner, %e, "cannot delete the neighbour entry of a macvlan endpoint");
        }
    }
}
