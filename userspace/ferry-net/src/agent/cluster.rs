//! The other members of the cluster, made into forwarding: each member's
//! block and own address in the `remotes` map (the datapath routes its
//! containers' packets there), and a kernel route to each block (so the
//! host's own processes reach remote containers too).

use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_common::{
    CLUSTER_VNI, REMOTE_BLOCK, REMOTE_NATIVE, REMOTE_NODE, REMOTE_VXLAN, RemoteNode,
};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{Agent, AgentError};
use crate::link::Mac;

/// Another member as forwarding needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub block: Ipv4Net,
    pub address: Ipv4Addr,
    pub mac: Mac,
}

/// How members are reached (`ferryd --cluster-routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Natively on a connected subnet, else through the tunnel.
    Auto,
    /// Natively only: members elsewhere are unreachable.
    Native,
    /// Always through the tunnel.
    Vxlan,
}

/// The interface this node reaches the others through, the subnets it is
/// connected to, its address there, and the VXLAN device, if any.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub ifname: String,
    pub ifindex: u32,
    pub subnets: Vec<Ipv4Net>,
    pub address: Ipv4Addr,
    /// The VXLAN device's ifindex (none with `Routing::Native`).
    pub vxlan: Option<u32>,
    pub routing: Routing,
}

impl Underlay {
    /// How `member` is reached: `REMOTE_NATIVE`, `REMOTE_VXLAN`, or not.
    pub fn mode(&self, member: &Member) -> Option<u8> {
        let on_segment = self.subnets.iter().any(|s| s.contains(&member.address));
        match (self.routing, on_segment, self.vxlan) {
            (Routing::Auto | Routing::Native, true, _) => Some(REMOTE_NATIVE),
            (Routing::Auto | Routing::Vxlan, _, Some(_)) => Some(REMOTE_VXLAN),
            _ => None,
        }
    }
}

/// `ferry node ls`'s word for a mode.
pub fn mode_name(mode: Option<u8>) -> &'static str {
    match mode {
        Some(REMOTE_NATIVE) => "native",
        Some(_) => "vxlan",
        None => "unreachable",
    }
}

impl Agent {
    /// Makes forwarding match `members`, the whole cluster but this node:
    /// entries and routes of members gone are removed, new and changed ones
    /// written. Members it cannot reach are left out, logged.
    pub async fn apply_members(
        &mut self,
        underlay: &Underlay,
        members: &[Member],
    ) -> Result<(), AgentError> {
        let mut want = BTreeMap::new();
        for member in members {
            let Some(mode) = underlay.mode(member) else {
                warn!(
                    member = %member.name,
                    address = %member.address,
                    underlay = %underlay.ifname,
                    "member not on a connected subnet of the underlay and no tunnel: unreachable"
                );
                continue;
            };
            let node = |kind| RemoteNode {
                underlay: member.address.octets(),
                mac: member.mac,
                kind,
                mode,
                ifindex: match (mode, underlay.vxlan) {
                    (REMOTE_VXLAN, Some(vxlan)) => vxlan,
                    _ => underlay.ifindex,
                },
            };
            want.insert(member.block, node(REMOTE_BLOCK));
            want.insert(Ipv4Net::from(member.address), node(REMOTE_NODE));
        }
        let have: BTreeMap<Ipv4Net, RemoteNode> = self
            .datapath
            .remotes()
            .map_err(AgentError::internal)?
            .into_iter()
            .collect();
        for (net, node) in &have {
            if want.contains_key(net) {
                continue;
            }
            self.datapath
                .remove_remote(*net)
                .map_err(AgentError::internal)?;
            if node.kind == REMOTE_BLOCK {
                self.netlink
                    .delete_route(*net)
                    .await
                    .map_err(AgentError::internal)?;
                info!(block = %net, "remote block gone");
            }
        }
        for (net, node) in &want {
            if have.get(net) == Some(node) {
                continue;
            }
            self.datapath
                .set_remote(*net, *node)
                .map_err(AgentError::internal)?;
            if node.kind != REMOTE_BLOCK {
                continue;
            }
            let via = Ipv4Addr::from(node.underlay);
            let routed = if node.mode == REMOTE_VXLAN {
                self.netlink
                    .replace_route_encap(*net, CLUSTER_VNI, via, node.ifindex, underlay.address)
                    .await
            } else {
                self.netlink
                    .replace_route_via(*net, via, node.ifindex)
                    .await
            };
            routed.map_err(AgentError::internal)?;
            info!(block = %net, %via, mode = mode_name(Some(node.mode)), "remote block reached");
        }
        Ok(())
    }
}
