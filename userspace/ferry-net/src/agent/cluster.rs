//! The other members of the cluster, made into forwarding: each member's
//! block and own address in the `remotes` map (the datapath routes its
//! containers' packets there), and a kernel route to each block (so the
//! host's own processes reach remote containers too).

use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_common::{REMOTE_BLOCK, REMOTE_NODE, RemoteNode};
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

/// The interface this node reaches the others through, and the subnets it
/// is connected to (a member on one of them is reached natively).
#[derive(Debug, Clone)]
pub struct Underlay {
    pub ifname: String,
    pub ifindex: u32,
    pub subnets: Vec<Ipv4Net>,
}

impl Underlay {
    /// Whether `member` is reached natively: on a connected subnet.
    pub fn reaches(&self, member: &Member) -> bool {
        self.subnets.iter().any(|s| s.contains(&member.address))
    }
}

impl Agent {
    /// Makes forwarding match `members`, the whole cluster but this node:
    /// entries and routes of members gone are removed, new and changed ones
    /// written. Members not on a connected subnet are left out, logged.
    pub async fn apply_members(
        &mut self,
        underlay: &Underlay,
        members: &[Member],
    ) -> Result<(), AgentError> {
        let mut want = BTreeMap::new();
        for member in members {
            if !underlay.reaches(member) {
                warn!(
                    member = %member.name,
                    address = %member.address,
                    underlay = %underlay.ifname,
                    "member not on a connected subnet of the underlay: not reachable without a tunnel"
                );
                continue;
            }
            let node = |kind| RemoteNode {
                underlay: member.address.octets(),
                mac: member.mac,
                kind,
                pad: 0,
                ifindex: underlay.ifindex,
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
            if node.kind == REMOTE_BLOCK {
                let via = Ipv4Addr::from(node.underlay);
                self.netlink
                    .replace_route_via(*net, via, underlay.ifindex)
                    .await
                    .map_err(AgentError::internal)?;
                info!(block = %net, %via, "remote block reached natively");
            }
        }
        Ok(())
    }
}
