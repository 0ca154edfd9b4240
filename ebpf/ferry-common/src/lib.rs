//! Map keys, values and constants shared by ferry's eBPF programs and by
//! `ferryd`, which fills the maps.
//!
//! Every type is `#[repr(C)]`, has no implicit padding and no `bool`, and its
//! size is asserted at compile time so both sides agree byte for byte.
//! Addresses are kept as byte arrays in network order (`bpftool map dump`
//! prints them readably); integers are in host byte order unless a field
//! comment says otherwise.
#![no_std]

use core::mem::size_of;

/// The gateway address every container routes through (`default via
/// 169.254.1.1 dev eth0 onlink`). Nothing answers for it: the container holds
/// a permanent neighbour entry mapping it to the host-side veth's MAC.
pub const GATEWAY_V4: [u8; 4] = [169, 254, 1, 1];

/// `ct_stats` slots, summed over CPUs by ferryd. Conntrack has two tables:
/// `ct_new` (an LRU map) holds flows not yet assured, `ct` (a hash map that
/// never evicts) the assured ones; entries move between them (see
/// `ct.rs`). For each table: entries that entered it, left it for the
/// other one, and were removed by ferryd (GC, flush; written by ferryd in
/// CPU 0's slot). What none explains, the map evicted:
/// entered - left - removed - live.
pub const CT_STAT_NEW_ENTERED: u32 = 0;
pub const CT_STAT_NEW_REMOVED: u32 = 1;
pub const CT_STAT_NEW_LEFT: u32 = 2;
pub const CT_STAT_ASSURED_ENTERED: u32 = 3;
pub const CT_STAT_ASSURED_REMOVED: u32 = 4;
pub const CT_STAT_ASSURED_LEFT: u32 = 5;
/// Promotions refused because `ct` was full: the flow stays in `ct_new`.
pub const CT_STAT_ASSURED_FULL: u32 = 6;
pub const CT_STATS: u32 = 7;

/// The `config` array's slot that holds the run-time switches.
pub const CONFIG_FLAGS: u32 = 0;
/// Switch: the programs log drops and new flows through aya-log.
pub const CONFIG_DEBUG_LOG: u32 = 1;

/// Capacity of the endpoint map (containers on this host).
pub const MAX_ENDPOINTS: u32 = 4096;

/// Capacity of the network policy map (user-defined networks).
pub const MAX_NETWORKS: u32 = 1024;
/// Network policy bit: an internal network reaches nothing outside itself
/// (no masquerade, no host, no published ports).
pub const NET_INTERNAL: u32 = 1;
/// Network policy bit: containers of the network may not talk to each
/// other (Docker's `com.docker.network.bridge.enable_icc=false`).
pub const NET_NO_ICC: u32 = 2;

/// Policy of a network (`networks` map, by `Endpoint::net_id`). A network
/// without an entry (the default one) has no restriction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetPolicy {
    /// `NET_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<NetPolicy>() == 4);

/// An IPv4 address as a map key: of a container (`endpoints`) or of the
/// host (`host_addrs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ipv4Key {
    /// Network byte order.
    pub ip: [u8; 4],
}
const _: () = assert!(size_of::<Ipv4Key>() == 4);

/// A local container as the datapath sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Host-side veth (`fy<id>`) ifindex in ferryd's namespace.
    pub ifindex: u32,
    /// Network the container is attached to; traffic between networks drops.
    pub net_id: u32,
    /// MAC of the container's `eth0`.
    pub mac: [u8; 6],
    /// MAC of the host-side veth: the container's gateway MAC.
    pub host_mac: [u8; 6],
    /// Index of the container's counters in `ep_stats`, given by ferryd:
    /// the programs count with an array index they already hold instead
    /// of a hash lookup per packet.
    pub stats: u32,
    /// `EP_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<Endpoint>() == 28);

/// Endpoint flag: the container's interface is a macvlan slave of the
/// uplink `Endpoint::ifindex` (not a veth), and `Endpoint::host_mac` is
/// that uplink's MAC. Packets reach it through the uplink's ingress, where
/// macvlan's receive handler delivers them by destination MAC; what it
/// sends leaves through the uplink's egress (`uplink_egress`).
pub const EP_MACVLAN: u32 = 1;

/// skb mark of a packet `uplink_egress` turned back into its uplink's
/// ingress for a macvlan container (from the host or another container):
/// `uplink_ingress` lets such a packet through to macvlan, clearing the
/// mark, and drops any other packet from outside addressed to a macvlan
/// container directly.
pub const MARK_REINJECTED: u32 = 0x6665_7279;

/// A macvlan parent (`macvlan_parents` map, by ifindex): an uplink that
/// has `uplink_egress` attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MacvlanParent {
    /// The uplink's own MAC: frames with another source MAC on its egress
    /// come from a macvlan slave.
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    /// The uplink's IPv4 address (network order; 0.0.0.0: none), which
    /// its macvlan containers are masqueraded to.
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<MacvlanParent>() == 12);

/// Capacity of the macvlan parent map.
pub const MAX_MACVLAN_PARENTS: u32 = 64;

/// `RemoteNode::kind`: the entry is a cluster member's block of container
/// addresses.
pub const REMOTE_BLOCK: u8 = 1;
/// `RemoteNode::kind`: the entry is a cluster member's own (underlay)
/// address.
pub const REMOTE_NODE: u8 = 2;

/// `RemoteNode::mode`: the member shares a segment with this node;
/// packets go to it as they are.
pub const REMOTE_NATIVE: u8 = 0;
/// `RemoteNode::mode`: packets go to the member through the VXLAN device.
pub const REMOTE_VXLAN: u8 = 1;

/// The VXLAN network identifier of the default network's traffic between
/// members.
pub const CLUSTER_VNI: u32 = 1;

/// Where another member of the cluster is reached (`remotes` map, an LPM
/// trie by address prefix: each member's block and its own address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteNode {
    /// The member's underlay address (network order): the next hop.
    pub underlay: [u8; 4],
    /// The MAC the member sends from: packets from its block or address
    /// are accepted from this MAC only.
    pub mac: [u8; 6],
    /// `REMOTE_BLOCK` or `REMOTE_NODE`.
    pub kind: u8,
    /// `REMOTE_NATIVE` or `REMOTE_VXLAN`.
    pub mode: u8,
    /// The device packets to the member leave by: the underlay uplink
    /// (native) or the VXLAN device.
    pub ifindex: u32,
}
const _: () = assert!(size_of::<RemoteNode>() == 16);

/// Capacity of the `remotes` map: two entries per member.
pub const MAX_REMOTES: u32 = 2048;

/// Traffic counters of a container (`ep_stats`, at `Endpoint::stats`) or of a published port
/// (`port_stats`), per CPU (userspace sums the CPUs). `tx` is what the
/// container sent, `rx` what was delivered to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}
const _: () = assert!(size_of::<EndpointStats>() == 32);

impl EndpointStats {
    /// Sum of two per-CPU slots.
    #[must_use]
    pub fn merged(self, other: Self) -> Self {
        Self {
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
        }
    }
}

/// Capacity of the published-port map.
pub const MAX_PORTMAPS: u32 = 65536;
/// Capacity of the assured connection-tracking map `ct` (two entries per
/// flow).
pub const MAX_CT: u32 = 262_144;
/// Capacity of `ct_new`, the LRU map of flows not yet assured (two
/// entries per flow). It only has to hold a flow for its handshake.
pub const MAX_CT_NEW: u32 = 65_536;
/// Capacity of the host-address map.
pub const MAX_HOST_ADDRS: u32 = 256;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of the `portmap` map: a published host port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PortKey {
    /// Host address the port is published on; 0.0.0.0 = every host address.
    pub ip: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<PortKey>() == 8);

/// Where a published port leads: a container address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortTarget {
    pub ip: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<PortTarget>() == 8);

/// Key of the `ct` map: a flow as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Network byte order.
    pub sport: [u8; 2],
    /// Network byte order.
    pub dport: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 16);

/// `CtEntry::kind`: what to do with a packet matching the key.
/// Published port, client to container: rewrite the destination to
/// `nat_addr:nat_port` and deliver to the container behind `ifindex`.
pub const CT_DNAT: u8 = 1;
/// Published port, container to client: rewrite the source to
/// `nat_addr:nat_port` and send out of `ifindex` (the uplink the request
/// came in on) from `smac` to `dmac`.
pub const CT_DNAT_REPLY: u8 = 2;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Masquerade, container to outside: rewrite the source to
/// `nat_addr:nat_port` and route out (FIB lookup).
pub const CT_SNAT: u8 = 3;
/// Masquerade, outside to container: rewrite the destination to
/// `nat_addr:nat_port` (the container's) and deliver through `ifindex`.
pub const CT_SNAT_REPLY: u8 = 4;

/// Ports (and ICMP echo ids) masquerade hands out. Outside Linux's default
/// ephemeral range (32768-60999), and put in `ip_local_reserved_ports` by
/// ferryd, so host sockets do not get them.
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 65535;

/// `CtEntry::tcp_flags` of a UDP or ICMP direction a packet went.
pub const CT_SEEN: u8 = 0x01;

/// A tracked flow direction and its translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub nat_addr: [u8; 4],
    /// Network byte order.
    pub nat_port: [u8; 2],
    /// `CT_DNAT`, `CT_DNAT_REPLY`, `CT_SNAT` or `CT_SNAT_REPLY`.
    pub kind: u8,
    /// What was seen in this direction, for the userspace GC's states and
    /// timeouts: for TCP the OR of every packet's flags, for UDP and ICMP
    /// `CT_SEEN` once a packet went this way (a flow whose reply direction
    /// has it was answered).
    pub tcp_flags: u8,
    /// Where packets of this direction leave (host veth or uplink).
    pub ifindex: u32,
    /// For `CT_DNAT_REPLY`: the next hop the request came from, and the
    /// uplink's own MAC.
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// CLOCK_MONOTONIC of the last packet, at tick resolution
    /// (`bpf_ktime_get_coarse_ns`), for the userspace GC.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 32);

impl CtKey {
    /// The key of the other direction of the flow this direction (with
    /// its `entry`) belongs to: each direction names the other through its
    /// key and translation.
    #[inline(always)]
    pub fn pair(&self, entry: &CtEntry) -> CtKey {
        let icmp = self.proto == IPPROTO_ICMP;
        if entry.kind == CT_DNAT || entry.kind == CT_SNAT_REPLY {
            // Translated destination: the other direction comes from it.
            CtKey {
                saddr: entry.nat_addr,
                daddr: self.saddr,
                sport: entry.nat_port,
                dport: if icmp { [0; 2] } else { self.sport },
                ..*self
            }
        } else {
            // Translated source: the other direction goes to it.
            CtKey {
                saddr: self.daddr,
                daddr: entry.nat_addr,
                sport: if icmp { entry.nat_port } else { self.dport },
                dport: if icmp { [0; 2] } else { entry.nat_port },
                ..*self
            }
        }
    }
}

/// Whether a flow whose originator sent `sent` and whose responder sent
/// `answered` (`CtEntry::tcp_flags` of each direction) is assured, worth
/// protecting from eviction: TCP once both sides acknowledged something
/// (a completed handshake, or a flow picked up mid-stream) and neither
/// began to close; UDP and ICMP once answered. The datapath promotes a
/// flow when its originator sends again after this holds.
#[inline(always)]
pub fn ct_assured(proto: u8, sent: u8, answered: u8) -> bool {
    if proto == IPPROTO_TCP {
        sent & answered & TCP_ACK != 0 && (sent | answered) & (TCP_FIN | TCP_RST) == 0
    } else {
        answered & CT_SEEN != 0
    }
}

impl CtEntry {
    /// Whether this is the originator's direction (the one that opened the
    /// flow) rather than the responder's.
    #[inline(always)]
    pub fn is_originator(&self) -> bool {
        self.kind == CT_DNAT || self.kind == CT_SNAT
    }
}

/// Capacity of the fragment map (datagrams in flight, not flows).
pub const MAX_FRAGS: u32 = 16384;

/// Key of the `frags` map: the fragments of one IPv4 datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// IPv4 identification, network byte order.
    pub id: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// Capacity of the socket reverse-translation map.
pub const MAX_SOCK_REVNAT: u32 = 65536;
/// Capacity of the served-namespace map.
pub const MAX_NETNS: u32 = 4096;

/// `sock_netns` values: which destinations a namespace's sockets may have
/// translated to a published port's container.
/// ferryd's own namespace (the host): loopback and the host's addresses.
pub const NETNS_HOST: u32 = 1;
/// A container's namespace: the host's addresses only (its loopback is its
/// own, as in Docker).
pub const NETNS_CONTAINER: u32 = 2;

/// Value of the `sock_peer` socket storage: what a connected socket asked
/// for (`asked`, a published address) and where its `connect` was sent
/// instead (`target`, the container).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockPeer {
    pub asked: PortTarget,
    pub target: PortTarget,
}
const _: () = assert!(size_of::<SockPeer>() == 16);

/// Key of the `sock_revnat` map: a socket (by cookie) and the container
/// address an unconnected socket's datagram was translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    pub cookie: u64,
    pub ip: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<SockRevKey>() == 16);

/// Why the datapath dropped a packet: the index into the `drops` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header is truncated or inconsistent (e.g. IPv4 IHL < 5).
    Malformed = 0,
    /// The source IP is not the address of the container behind this veth.
    SpoofedIp = 1,
    /// The source MAC is not the MAC of the container behind this veth.
    SpoofedMac = 2,
    /// An L3 protocol ferry does not forward yet (IPv6 and others).
    UnsupportedL3 = 3,
    /// Source and destination containers are on different networks.
    PolicyDenied = 4,
    /// The redirect helper refused the packet.
    RedirectFailed = 5,
    /// A NAT rewrite (store or checksum helper) failed.
    NatFailed = 6,
    /// Traffic for outside with no route (FIB lookup failed).
    NoRoute = 7,
    /// No masquerade port was free for this destination.
    SnatExhausted = 8,
    /// Traffic for outside that ferry cannot translate yet: not TCP, UDP
    /// or ICMP echo.
    UnsupportedL4 = 9,
    /// XDP on an uplink: a packet from outside with a container's address
    /// as its source.
    OutsideSpoofed = 10,
    /// A packet from outside addressed to a container directly (containers
    /// are reached only through published ports): dropped by XDP on an
    /// uplink, and on a macvlan parent's tc ingress (macvlan would deliver
    /// it).
    OutsideToContainer = 11,
    /// A later fragment of a translated datagram whose first fragment was
    /// not seen (reordered or lost).
    FragmentUnknown = 12,
    /// A packet from outside for a container arrived with TTL 1 or 0.
    TtlExpired = 13,
    /// The tunnel metadata of a packet for a member could not be set, or
    /// a packet arrived through the tunnel from something that is not the
    /// member its source address belongs to, or for no local container.
    TunnelRefused = 14,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 15] = [
        Self::Malformed,
        Self::SpoofedIp,
        Self::SpoofedMac,
        Self::UnsupportedL3,
        Self::PolicyDenied,
        Self::RedirectFailed,
        Self::NatFailed,
        Self::NoRoute,
        Self::SnatExhausted,
        Self::UnsupportedL4,
        Self::OutsideSpoofed,
        Self::OutsideToContainer,
        Self::FragmentUnknown,
        Self::TtlExpired,
        Self::TunnelRefused,
    ];
    /// Number of reasons: the size of the `drops` map.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used by the CLI, metrics and docs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::SpoofedIp => "spoofed_ip",
            Self::SpoofedMac => "spoofed_mac",
            Self::UnsupportedL3 => "unsupported_l3",
            Self::PolicyDenied => "policy_denied",
            Self::RedirectFailed => "redirect_failed",
            Self::NatFailed => "nat_failed",
            Self::NoRoute => "no_route",
            Self::SnatExhausted => "snat_exhausted",
            Self::UnsupportedL4 => "unsupported_l4",
            Self::OutsideSpoofed => "outside_spoofed",
            Self::OutsideToContainer => "outside_to_container",
            Self::FragmentUnknown => "fragment_unknown",
            Self::TtlExpired => "ttl_expired",
            Self::TunnelRefused => "tunnel_refused",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), padding-free (sizes asserted above) and
    // valid for every bit pattern.
    unsafe impl aya::Pod for super::Ipv4Key {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::PortTarget {}
    unsafe impl aya::Pod for super::NetPolicy {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::MacvlanParent {}
    unsafe impl aya::Pod for super::RemoteNode {}
    unsafe impl aya::Pod for super::EndpointStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_dense_and_named_uniquely() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
            for other in &DropReason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
            }
        }
    }

    #[test]
    fn endpoint_layout_matches_the_kernel_side() {
        assert_eq!(core::mem::offset_of!(Endpoint, ifindex), 0);
        assert_eq!(core::mem::offset_of!(Endpoint, net_id), 4);
        assert_eq!(core::mem::offset_of!(Endpoint, mac), 8);
        assert_eq!(core::mem::offset_of!(Endpoint, host_mac), 14);
    }
}
