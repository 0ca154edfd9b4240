//! Interfaces, addresses, routes and neighbours via rtnetlink.
//!
//! A `Netlink` handle is bound to the network namespace it was opened in, so
//! ferryd configures a container's side by opening a handle inside the
//! container's namespace, never by moving the daemon's thread around while
//! awaiting.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, BorrowedFd},
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, MacVlanMode},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAttribute, RouteHeader, RouteIpTunnel, RouteLwEnCapType, RouteLwTunnelEncap,
        RouteScope,
    },
};
use rtnetlink::{
    Handle, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    new_connection,
};

use crate::netns::{NetNsGuard, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op} {target}: {source}")]
    Request {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
}

pub type Mac = [u8; 6];

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;

/// Formats a MAC the way `ip link` prints it.
pub fn mac_to_string(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`; a unicast address only (an interface cannot
/// have a multicast one).
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// An rtnetlink connection in one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the current thread's namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self, LinkError> {
        let (connection, handle, _) = new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// A connection inside another namespace: the socket is created there and
    /// stays there after this thread returns home.
    pub fn in_netns(netns: BorrowedFd<'_>) -> Result<Self, LinkError> {
        let _guard = NetNsGuard::enter(netns)?;
        Self::current()
    }

    fn fail(op: &'static str, target: impl ToString) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let target = target.to_string();
        move |source| LinkError::Request { op, target, source }
    }

    /// Creates a veth pair: `host_name` here, `peer_name` directly inside
    /// `peer_netns`, both with fixed MACs (and `mtu`, else the default).
    /// Returns the host side's ifindex.
    pub async fn create_veth(
        &self,
        host_name: &str,
        host_mac: Mac,
        peer_name: &str,
        peer_mac: Mac,
        peer_netns: BorrowedFd<'_>,
        mtu: Option<u32>,
    ) -> Result<u32, LinkError> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_owned())
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_netns.as_raw_fd());
        let mut host = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_owned())
            .address(host_mac.to_vec());
        if let Some(mtu) = mtu {
            peer = peer.mtu(mtu);
            host = host.mtu(mtu);
        }
        let msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.add_link(msg, "create veth", host_name).await
    }

    /// Adds the interface `msg` describes, `name` in this namespace, and
    /// returns its ifindex.
    async fn add_link(
        &self,
        msg: netlink_packet_route::link::LinkMessage,
        op: &'static str,
        name: &str,
    ) -> Result<u32, LinkError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(Self::fail(op, name))?;
        self.index_of(name)
            .await?
            .ok_or_else(|| LinkError::Request {
                op,
                target: name.to_owned(),
                source: rtnetlink::Error::RequestFailed,
            })
    }

    /// Creates a macvlan slave of `parent` (an interface here) called
    /// `name`, with `mac`, directly inside `netns`. Private mode: slaves
    /// never reach each other directly, everything they send leaves through
    /// the parent's egress (where ferry's program decides it).
    pub async fn create_macvlan(
        &self,
        parent: u32,
        name: &str,
        mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        let msg = LinkMacVlan::new(name, parent, MacVlanMode::Private)
            .address(mac.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(Self::fail("create macvlan", name))
    }

    /// Creates (or keeps) `name`, a VXLAN device in external mode
    /// (collect_md: one device for every far end, each packet's set by the
    /// datapath) on `underlay`, UDP port 4789, no learning, no ARP; up.
    /// Its MTU is the underlay's less the encapsulation. Returns its
    /// ifindex.
    pub async fn ensure_vxlan(&self, name: &str, underlay: u32) -> Result<u32, LinkError> {
        if let Some(index) = self.index_of(name).await? {
            return Ok(index);
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Vxlan)
            .name(name.to_owned())
            .set_info_data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Link(underlay),
                InfoVxlan::Port(VXLAN_PORT),
                InfoVxlan::Learning(false),
            ]))
            .arp(false)
            .up()
            .build();
        self.add_link(msg, "create vxlan", name).await
    }

    /// The MTU of interface `index`.
    pub async fn mtu_of(&self, index: u32) -> Result<Option<u32>, LinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await
            .map_err(Self::fail("look up", index))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(mtu),
                _ => None,
            })
        }))
    }

    /// The interface called `name`, `None` if there is none.
    async fn link_named(
        &self,
        name: &str,
    ) -> Result<Option<netlink_packet_route::link::LinkMessage>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(source) => Err(LinkError::Request {
                op: "look up",
                target: name.to_owned(),
                source,
            }),
        }
    }

    /// The ifindex of `name`, `None` if there is no such interface.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        Ok(self.link_named(name).await?.map(|msg| msg.header.index))
    }

    /// One attribute of interface `index`, picked by `pick`.
    async fn link_attribute<T>(
        &self,
        index: u32,
        pick: impl Fn(LinkAttribute) -> Option<T>,
    ) -> Result<Option<T>, LinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await
            .map_err(Self::fail("look up", index))?;
        Ok(msg.and_then(|m| m.attributes.into_iter().find_map(pick)))
    }

    /// How an XDP program is attached to `name`, as the kernel reports it:
    /// `native`, `generic` (skb mode), `offload`, `multi`; `None` if none.
    pub async fn xdp_mode(&self, name: &str) -> Result<Option<&'static str>, LinkError> {
        use netlink_packet_route::link::{LinkXdp, XdpAttached};
        let Some(msg) = self.link_named(name).await? else {
            return Ok(None);
        };
        let mode = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
                LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
                LinkXdp::Attached(XdpAttached::Multiple) => Some("multi"),
                _ => None,
            }),
            _ => None,
        });
        Ok(mode)
    }

    /// The MAC of interface `index`.
    pub async fn mac_of(&self, index: u32) -> Result<Option<Mac>, LinkError> {
        self.link_attribute(index, |a| match a {
            LinkAttribute::Address(bytes) => bytes.try_into().ok(),
            _ => None,
        })
        .await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(Self::fail("set up", index))
    }

    /// Deletes an interface (and with a veth, its peer). Missing is fine.
    pub async fn delete(&self, index: u32) -> Result<(), LinkError> {
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            other => other.map_err(Self::fail("delete link", index)),
        }
    }

    pub async fn add_address(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
            .map_err(Self::fail("add address", format!("{addr}/{prefix}")))
    }

    /// A PERMANENT neighbour entry: never resolved, never expires.
    pub async fn add_permanent_neighbour(
        &self,
        index: u32,
        addr: Ipv4Addr,
        mac: Mac,
    ) -> Result<(), LinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(Self::fail("add neighbour", addr))
    }

    /// Deletes the neighbour entry of `addr` on `index`. Missing is fine.
    pub async fn delete_neighbour(&self, index: u32, addr: Ipv4Addr) -> Result<(), LinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        match self.handle.neighbours().del(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
            other => other.map_err(Self::fail("delete neighbour", addr)),
        }
    }

    /// Deletes the route `<addr>/32 dev <index>`. Missing is fine.
    pub async fn delete_host_route(&self, index: u32, addr: Ipv4Addr) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        match self.handle.route().del(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            other => other.map_err(Self::fail("delete route", format!("{addr}/32"))),
        }
    }

    /// `ip route add <addr>/32 dev <index> scope link`.
    pub async fn add_host_route(&self, index: u32, addr: Ipv4Addr) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(Self::fail("add route", format!("{addr}/32")))
    }

    /// Names of the interfaces the IPv4 default routes (main table) leave by.
    pub async fn default_route_interfaces(&self) -> Result<Vec<String>, LinkError> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut names = Vec::new();
        while let Some(route) = routes
            .try_next()
            .await
            .map_err(Self::fail("list routes", "default"))?
        {
            if route.header.destination_prefix_length != 0
                || route.header.table != RouteHeader::RT_TABLE_MAIN
            {
                continue;
            }
            for attr in &route.attributes {
                if let RouteAttribute::Oif(index) = attr
                    && let Some(name) = self.name_of(*index).await?
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    async fn name_of(&self, index: u32) -> Result<Option<String>, LinkError> {
        self.link_attribute(index, |a| match a {
            LinkAttribute::IfName(name) => Some(name),
            _ => None,
        })
        .await
    }

    /// Every interface of this namespace: (ifindex, name).
    pub async fn links(&self) -> Result<Vec<(u32, String)>, LinkError> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(Self::fail("list links", "all"))?
        {
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                out.push((msg.header.index, name));
            }
        }
        Ok(out)
    }

    /// Every IPv4 address of this namespace.
    pub async fn ipv4_addresses(&self) -> Result<Vec<Ipv4Addr>, LinkError> {
        self.ipv4_addresses_of(None).await
    }

    /// The IPv4 addresses of interface `index` (all interfaces: `None`),
    /// primary first.
    pub async fn ipv4_addresses_of(&self, index: Option<u32>) -> Result<Vec<Ipv4Addr>, LinkError> {
        let nets = self.ipv4_networks_of(index).await?;
        Ok(nets.iter().map(ipnet::Ipv4Net::addr).collect())
    }

    /// Like [`Netlink::ipv4_addresses_of`], with each address's prefix
    /// length: the subnets the interface is connected to.
    pub async fn ipv4_networks_of(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<ipnet::Ipv4Net>, LinkError> {
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let mut addrs = request.execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(Self::fail("list addresses", "all"))?
        {
            let len = msg.header.prefix_len;
            for attr in msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a))
                | AddressAttribute::Address(IpAddr::V4(a)) = attr
                    && let Ok(net) = ipnet::Ipv4Net::new(a, len)
                    && !out.iter().any(|n: &ipnet::Ipv4Net| n.addr() == a)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// `ip route replace <net> via <gateway> dev <index>`.
    pub async fn replace_route_via(
        &self,
        net: ipnet::Ipv4Net,
        gateway: Ipv4Addr,
        index: u32,
    ) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(Self::fail("replace route", net))
    }

    /// `ip route replace <net> encap ip id <vni> dst <far_end> dev <index>
    /// src <src>`: the host's own packets for `net` through a VXLAN device
    /// in external mode.
    pub async fn replace_route_encap(
        &self,
        net: ipnet::Ipv4Net,
        vni: u32,
        far_end: Ipv4Addr,
        index: u32,
        src: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .output_interface(index)
            .pref_source(src)
            .scope(RouteScope::Link)
            .build();
        route
            .attributes
            .push(RouteAttribute::EncapType(RouteLwEnCapType::Ip));
        route.attributes.push(RouteAttribute::Encap(vec![
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(u64::from(vni))),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(far_end)),
        ]));
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(Self::fail("replace route", net))
    }

    /// Deletes the main table's route to `net`. Missing is fine.
    pub async fn delete_route(&self, net: ipnet::Ipv4Net) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .build();
        match self.handle.route().del(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            other => other.map_err(Self::fail("delete route", net)),
        }
    }

    /// `ip route add default via <gateway> dev <index> onlink`.
    /// `ip route add {default | <subnet> src <src>} via <gateway> dev
    /// <index> onlink`: a container's default route, or the subnet of a
    /// network reached through another of its interfaces.
    pub async fn add_route_onlink(
        &self,
        index: u32,
        subnet: Option<(ipnet::Ipv4Net, Ipv4Addr)>,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new();
        if let Some((net, src)) = subnet {
            route = route
                .destination_prefix(net.network(), net.prefix_len())
                .pref_source(src);
        }
        let route = route
            .gateway(gateway)
            .output_interface(index)
            .onlink()
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(Self::fail("add route via", gateway))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_back_from_their_text() {
        let mac = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x02];
        assert_eq!(parse_mac(&mac_to_string(&mac)), Some(mac));
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:02:03",
            "01:00:5e:00:00:01",
            "zz:42:0a:58:00:02",
            "2:42:0a:58:00:02",
            "00:00:00:00:00:00",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
