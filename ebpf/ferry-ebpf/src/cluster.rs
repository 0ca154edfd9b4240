//! Other members of the cluster: their containers are reached by their own
//! addresses, routed natively over the shared segment (no encapsulation,
//! no NAT, the sender's address preserved).

use aya_ebpf::{bindings::TC_ACT_OK, btf_maps::lpm_trie::Key, programs::TcContext};
use ferry_common::{DropReason, RemoteNode};

use crate::{
    csum::{Ttl, ttl_dec},
    maps::remotes,
    nat,
    parse::{EthHdr, mac_eq},
};

/// The member whose block (or own address) holds `addr`.
#[inline(always)]
pub fn remote_of(addr: [u8; 4]) -> Option<RemoteNode> {
    remotes.get(&Key::new(32, addr)).copied()
}

/// Whether a frame from outside with source address `saddr` comes from the
/// member that address belongs to: its block or its own address, from its
/// own MAC.
#[inline(always)]
pub fn from_member(eth: *const EthHdr, saddr: [u8; 4]) -> bool {
    // SAFETY: the caller checked the Ethernet header's bounds.
    remote_of(saddr).is_some_and(|node| mac_eq(unsafe { &(*eth).src }, &node.mac))
}

/// Sends a container's packet to member `node`, the next hop, out of the
/// uplink it is reached through; the kernel resolves its MAC. `leaving` is
/// the device whose egress hook runs (0 on a veth's ingress).
#[inline(always)]
pub fn to_member(ctx: &TcContext, node: &RemoteNode, leaving: u32) -> Result<i32, DropReason> {
    // Routed like anything else a container sends: an expiring packet from
    // a veth goes to the host stack, which answers time exceeded.
    if let Ttl::Expired = ttl_dec(ctx)? {
        if leaving != 0 {
            return Err(DropReason::TtlExpired);
        }
        return Ok(TC_ACT_OK);
    }
    nat::redirect_neigh(node.ifindex, node.underlay)
}
