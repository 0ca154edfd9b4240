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

/// Capacity of the endpoint map (containers on this host).
pub const MAX_ENDPOINTS: u32 = 4096;

/// Key of the `endpoints` and `ep_stats` maps: a container's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    /// Network byte order.
    pub ip: [u8; 4],
}
const _: () = assert!(size_of::<EndpointKey>() == 4);

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
}
const _: () = assert!(size_of::<Endpoint>() == 20);

/// Per-endpoint traffic counters (a per-CPU map; userspace sums the CPUs).
/// `tx` is what the container sent, `rx` what was delivered to it.
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
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 6] = [
        Self::Malformed,
        Self::SpoofedIp,
        Self::SpoofedMac,
        Self::UnsupportedL3,
        Self::PolicyDenied,
        Self::RedirectFailed,
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
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), padding-free (sizes asserted above) and
    // valid for every bit pattern.
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::Endpoint {}
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
