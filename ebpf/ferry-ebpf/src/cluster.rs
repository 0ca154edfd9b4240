//! Other members of the cluster: their containers are reached by their own
//! addresses, routed natively over a shared segment (no encapsulation, no
//! NAT, the sender's address preserved) or through the VXLAN device to a
//! member elsewhere. The program here, `tunnel_ingress`, is the VXLAN
//! device's receive side.

use aya_ebpf::{
    bindings::{BPF_F_ZERO_CSUM_TX, TC_ACT_OK, TC_ACT_REDIRECT, bpf_tunnel_key},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_redirect, bpf_skb_change_type, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::classifier,
    programs::TcContext,
};
use ferry_common::{CLUSTER_VNI, DropReason, EP_MACVLAN, Ipv4Key, REMOTE_VXLAN, RemoteNode};

use crate::{
    counters::tc_verdict,
    csum::{Ttl, ttl_dec},
    maps::{host_addrs, remotes},
    nat,
    parse::{EthHdr, ipv4_frame, mac_eq},
    uplink::{endpoint_of, into_container},
};

/// TTL of the outer header of a tunnelled packet.
const TUNNEL_TTL: u8 = 64;
/// `skb->pkt_type` of a packet for this host.
const PACKET_HOST: u32 = 0;

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

/// Sends a container's packet to member `node`: out of the underlay to the
/// member as next hop (the kernel resolves its MAC), or into the VXLAN
/// device with the member as the tunnel's far end. `leaving` is the device
/// whose egress hook runs (0 on a veth's ingress).
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
    if node.mode != REMOTE_VXLAN {
        return nat::redirect_neigh(node.ifindex, node.underlay);
    }
    // SAFETY: an all-zero key is valid; the fields used are set next.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = CLUSTER_VNI;
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(node.underlay);
    key.tunnel_ttl = TUNNEL_TTL;
    // No outer UDP checksum, as the kernel's own VXLAN devices send over
    // IPv4 by default (RFC 7348 allows it; the inner packet keeps its own).
    let flags = u64::from(BPF_F_ZERO_CSUM_TX);
    // SAFETY: `key` is a valid bpf_tunnel_key of the given size.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if rc != 0 {
        return Err(DropReason::TunnelRefused);
    }
    // SAFETY: a plain helper call.
    if unsafe { bpf_redirect(node.ifindex, 0) } != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// tc ingress on the VXLAN device: what members sent through the tunnel,
/// decapsulated.
///
/// Verdicts: `TC_ACT_REDIRECT` into a local container of the default
/// network (`bpf_redirect_peer`); `TC_ACT_OK` for the host's own addresses
/// (marked for this host whatever the inner MAC); `TC_ACT_SHOT`, counted,
/// for anything not from the member its source belongs to (the tunnel's
/// far end must be that member's address), not IPv4, or for nothing here.
#[classifier]
pub fn tunnel_ingress(ctx: TcContext) -> i32 {
    tc_verdict(try_tunnel_ingress(&ctx))
}

#[inline(always)]
fn try_tunnel_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((_, ip)) = ipv4_frame(ctx) else {
        return Err(DropReason::UnsupportedL3);
    };
    // SAFETY: bounds checked by `ipv4_frame`.
    let (saddr, daddr) = unsafe { ((*ip).src, (*ip).dst) };
    // SAFETY: an all-zero key is valid for the helper to fill.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: `key` is a valid, writable bpf_tunnel_key of the given size.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if rc != 0 || key.tunnel_id != CLUSTER_VNI {
        return Err(DropReason::TunnelRefused);
    }
    // SAFETY: the helper filled the IPv4 member (no IPv6 flag was given).
    let far_end = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    let member = remote_of(saddr).filter(|n| u32::from_be_bytes(n.underlay) == far_end);
    if member.is_none() {
        return Err(DropReason::TunnelRefused);
    }
    if let Some(endpoint) = endpoint_of(daddr) {
        if endpoint.net_id != 0 || endpoint.flags & EP_MACVLAN != 0 {
            return Err(DropReason::PolicyDenied);
        }
        return into_container(ctx, &endpoint);
    }
    // SAFETY: hash map values are valid for the program run; only presence
    // is checked.
    if unsafe { host_addrs.get(Ipv4Key { ip: daddr }) }.is_some() {
        // The inner MAC is the sender's guess; the host takes it anyway.
        // SAFETY: a plain helper call on this skb.
        unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
        return Ok(TC_ACT_OK);
    }
    Err(DropReason::TunnelRefused)
}
