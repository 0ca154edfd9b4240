//! ferryd as a member of a cluster (`--cluster`): the block it claims is
//! its default network's subnet, and every change of the other members
//! is made into forwarding by the agent.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use ferry_cluster::{Membership, Settings, View};
use ferry_net::agent::{Member, Routing, Underlay, mode_name};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::Daemon;
use crate::{
    api::{ApiError, ClusterJson, MemberJson},
    config::ClusterConfig,
    link::Netlink,
};

/// How long a first start waits for etcd to hand out a block.
const FIRST_JOIN_WAIT: Duration = Duration::from_secs(15);

/// What VXLAN adds to a packet: outer Ethernet, IPv4, UDP and VXLAN
/// headers.
const VXLAN_OVERHEAD: u32 = 50;

/// This node's place in the cluster, kept across restarts: a restarted
/// node asks for its own block back, and starts with it even while etcd
/// cannot be reached.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    node: String,
    block: Ipv4Net,
}

pub struct Cluster {
    pub membership: Membership,
    pub underlay: Underlay,
    /// Containers' MTU when a tunnel is possible.
    pub mtu: Option<u32>,
}

impl Cluster {
    /// Joins the cluster through one of `uplinks` (the one holding the
    /// configured address, else the first), before the default network
    /// exists: its subnet is the block.
    pub async fn join(
        config: &ClusterConfig,
        state_dir: &Path,
        netlink: &Netlink,
        uplinks: &[String],
    ) -> anyhow::Result<Self> {
        if config.block_len < config.pool.prefix_len() {
            anyhow::bail!(
                "a /{} block does not fit in the cluster pool {}",
                config.block_len,
                config.pool
            );
        }
        let mut underlay = underlay(config, netlink, uplinks).await?;
        let address = underlay.address;
        let mac = netlink
            .mac_of(underlay.ifindex)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{} has no MAC", underlay.ifname))?;
        let path = saved_path(state_dir);
        let previous = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) if saved.node == config.node && config.pool.contains(&saved.block) => {
                    Some(saved.block)
                }
                Ok(saved) => {
                    warn!(node = %saved.node, block = %saved.block, "the saved block is another node's or outside the pool; claiming anew");
                    None
                }
                Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let settings = Settings {
            endpoints: config.endpoints.clone(),
            node: config.node.clone(),
            pool: config.pool,
            block_len: config.block_len,
            lease_ttl: config.lease_ttl,
            address,
            mac,
        };
        let membership = Membership::join(settings, previous, FIRST_JOIN_WAIT)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot join the cluster at {}: {e}",
                    config.endpoints.join(",")
                )
            })?;
        let saved = Saved {
            node: config.node.clone(),
            block: membership.block(),
        };
        let json = serde_json::to_vec_pretty(&saved)?;
        ferry_net::files::write_atomically(&path, &json)
            .map_err(|e| anyhow::anyhow!("cannot save {}: {e}", path.display()))?;
        let mut mtu = None;
        if config.routing != Routing::Native {
            let vxlan = netlink
                .ensure_vxlan(ferry_net::datapath::VXLAN_DEVICE, underlay.ifindex)
                .await?;
            underlay.vxlan = Some(vxlan);
            let outer = netlink.mtu_of(underlay.ifindex).await?.unwrap_or(1500);
            mtu = Some(outer.saturating_sub(VXLAN_OVERHEAD));
        }
        info!(node = %config.node, block = %membership.block(), %address, underlay = %underlay.ifname, ?mtu, "cluster member");
        Ok(Self {
            membership,
            underlay,
            mtu,
        })
    }

    /// `ferry node ls`.
    pub async fn describe(&self) -> ClusterJson {
        let view = self.membership.subscribe().borrow().clone();
        // Without etcd there is nothing to ask (and each member would wait
        // out the request timeout).
        let leases: Vec<i64> = view.peers.values().map(|p| p.lease).collect();
        let ttls = if view.connected {
            self.membership.lease_ttls(&leases).await
        } else {
            Default::default()
        };
        let settings = self.membership.settings();
        let mut members = vec![MemberJson {
            name: settings.node.clone(),
            block: self.membership.block().to_string(),
            address: self.underlay.address.to_string(),
            mode: "self".into(),
            lease_ttl: None,
        }];
        for peer in view.peers.values() {
            let member = member_of(&peer.node);
            members.push(MemberJson {
                name: peer.node.name.clone(),
                block: peer.node.block.to_string(),
                address: peer.node.address.to_string(),
                mode: mode_name(member.and_then(|m| self.underlay.mode(&m))).into(),
                lease_ttl: ttls.get(&peer.lease).copied(),
            });
        }
        ClusterJson {
            node: settings.node.clone(),
            endpoints: settings.endpoints.clone(),
            connected: view.connected,
            error: view.error.clone(),
            last_contact_secs: view
                .last_contact
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs()),
            members,
        }
    }
}

fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster.json")
}

/// The uplink holding `config.address` (else the first uplink and its
/// first address), and the subnets it is connected to; no tunnel yet.
async fn underlay(
    config: &ClusterConfig,
    netlink: &Netlink,
    uplinks: &[String],
) -> anyhow::Result<Underlay> {
    for ifname in uplinks {
        let Some(ifindex) = netlink.index_of(ifname).await? else {
            continue;
        };
        let subnets = netlink.ipv4_networks_of(Some(ifindex)).await?;
        let address = match config.address {
            Some(want) => subnets.iter().map(Ipv4Net::addr).find(|a| *a == want),
            None => subnets.first().map(Ipv4Net::addr),
        };
        if let Some(address) = address {
            return Ok(Underlay {
                ifname: ifname.clone(),
                ifindex,
                subnets,
                address,
                vxlan: None,
                routing: config.routing,
            });
        }
    }
    match config.address {
        Some(want) => anyhow::bail!(
            "--cluster-address {want} is on none of the uplinks ({}); give --uplink the interface that holds it",
            uplinks.join(", ")
        ),
        None => anyhow::bail!(
            "no uplink has an IPv4 address to reach the cluster by (uplinks: {})",
            uplinks.join(", ")
        ),
    }
}

fn member_of(node: &ferry_cluster::Node) -> Option<Member> {
    Some(Member {
        name: node.name.clone(),
        block: node.block,
        address: node.address,
        mac: node.mac_bytes()?,
    })
}

impl Daemon {
    /// Follows the members for as long as ferryd runs, making each view
    /// into forwarding. Until etcd has answered once, the entries a
    /// previous ferryd left pinned stand.
    pub(super) fn follow_cluster(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let daemon = Arc::clone(self);
        let mut views = cluster.membership.subscribe();
        tokio::spawn(async move {
            loop {
                let view: View = views.borrow_and_update().clone();
                if view.last_contact.is_some() {
                    let members: Vec<Member> = view
                        .peers
                        .values()
                        .filter_map(|p| member_of(&p.node))
                        .collect();
                    let mut inner = daemon.inner.lock().await;
                    if let Err(e) = inner.agent.apply_members(&cluster.underlay, &members).await {
                        warn!(%e, "cannot apply the cluster's members to the datapath");
                    }
                }
                if views.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// `GET /cluster`.
    pub async fn cluster_info(&self) -> Result<ClusterJson, ApiError> {
        match &self.cluster {
            Some(cluster) => Ok(cluster.describe().await),
            None => Err(ApiError::NotFound(
                "this ferryd is not in a cluster (start it with --cluster etcd://HOST:PORT,...)"
                    .into(),
            )),
        }
    }
}
