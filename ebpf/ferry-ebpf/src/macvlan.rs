//! The program on the egress of an uplink that is a macvlan parent.
//!
//! A macvlan container's `eth0` is a slave of the uplink: what it sends is
//! queued straight on the uplink (macvlan in private mode never bridges
//! between slaves), and what it receives is sorted out by macvlan's
//! receive handler on the uplink, by destination MAC. No veth, no backlog
//! queue in either direction. So the uplink's egress is where a macvlan
//! container's packets are checked and translated, as `from_container` does
//! on a veth, and its ingress (`uplink_ingress`) is where packets for it are
//! translated and addressed to its MAC.
//!
//! The same egress carries the host's own traffic, told apart by the
//! source MAC: the uplink's own MAC is the host's, any other a slave's.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use ferry_common::{DropReason, EP_MACVLAN, Endpoint, Ipv4Key};

use crate::{
    cluster::to_member,
    counters::{count_rx, count_tx, tc_verdict},
    csum::set_macs,
    lxc::{Dest, Exit, destination, to_outside},
    maps::{endpoints, macvlan_parents},
    nat::Way,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IPV4_MIN_HLEN, Ipv4Hdr, mac_eq, ptr_at, pull},
    uplink::reinject,
};

/// tc egress on a macvlan parent: everything the host and its macvlan
/// containers send out of it.
///
/// Verdicts: for a container's packet, what `from_container` would decide
/// (translated and `TC_ACT_OK` out of this uplink for a published-port
/// reply, `TC_ACT_REDIRECT` for masquerade), or `TC_ACT_REDIRECT` back into
/// this uplink's ingress for the host or another container of its network;
/// for the host's packet, `TC_ACT_REDIRECT` into the ingress for a macvlan
/// container, `TC_ACT_OK` for everything else; `TC_ACT_SHOT` for a slave's
/// frame that is not IPv4 from its own address and MAC, and what the
/// network policy forbids, counted.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    tc_verdict(try_uplink_egress(&ctx))
}

#[inline(always)]
fn try_uplink_egress(ctx: &TcContext) -> Result<i32, DropReason> {
    const PASS: Result<i32, DropReason> = Ok(TC_ACT_OK);
    // SAFETY: the program runs on an skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: hash map values are valid for the program run; copied out.
    let Some(parent) = (unsafe { macvlan_parents.get(ifindex) }).copied() else {
        // Attached where no macvlan network lives (any more): nothing to do.
        return PASS;
    };
    pull(ctx, ETH_HLEN + IPV4_MIN_HLEN);
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (from_host, proto) = unsafe { (mac_eq(&(*eth).src, &parent.mac), (*eth).proto()) };
    if proto != ETH_P_IP {
        // A container speaks IPv4 only, to neighbours it never has to ask
        // for (its gateway's entry is permanent).
        return if from_host {
            PASS
        } else {
            Err(DropReason::UnsupportedL3)
        };
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr_at`; the header is only read here.
    let (src, dst) = unsafe {
        if (*ip).version() != 4 || (*ip).header_len() < IPV4_MIN_HLEN {
            return if from_host {
                PASS
            } else {
                Err(DropReason::Malformed)
            };
        }
        (Ipv4Key { ip: (*ip).src }, Ipv4Key { ip: (*ip).dst })
    };
    // SAFETY: hash map values are valid for the program run; copied out.
    let me = unsafe { endpoints.get(src) }
        .copied()
        .filter(|ep| ep.flags & EP_MACVLAN != 0 && ep.ifindex == ifindex);
    let Some(me) = me else {
        if !from_host {
            return Err(DropReason::SpoofedIp);
        }
        return from_host_to(ctx, &dst);
    };
    // SAFETY: bounds checked by `ptr_at`.
    if !mac_eq(unsafe { &(*eth).src }, &me.mac) {
        return Err(DropReason::SpoofedMac);
    }
    count_tx(&me, ctx.len());
    let exit = Exit {
        leaving: ifindex,
        way: Way::Parent {
            ifindex,
            addr: parent.addr,
        },
    };
    from_slave(ctx, ip, &src, &dst, &me, exit)
}

/// The host's own packet: one for a macvlan container on this uplink goes
/// back into the uplink's ingress (its route and permanent neighbour
/// entry put the container's MAC on it), everything else leaves.
#[inline(always)]
fn from_host_to(ctx: &TcContext, dst: &Ipv4Key) -> Result<i32, DropReason> {
    // SAFETY: hash map values are valid for the program run; copied out.
    let Some(peer) = (unsafe { endpoints.get(dst) }).copied() else {
        return Ok(TC_ACT_OK);
    };
    if peer.flags & EP_MACVLAN == 0 {
        return Ok(TC_ACT_OK);
    }
    to_slave(ctx, &peer)
}

/// A validated packet from macvlan container `me`.
#[inline(always)]
fn from_slave(
    ctx: &TcContext,
    ip: *const Ipv4Hdr,
    src: &Ipv4Key,
    dst: &Ipv4Key,
    me: &Endpoint,
    exit: Exit,
) -> Result<i32, DropReason> {
    match destination(me, dst)? {
        Dest::Peer(peer) => to_slave(ctx, peer),
        Dest::Host => {
            // To the host: its own ingress, addressed to the uplink's MAC
            // (the container's gateway entry says so already).
            set_macs(ctx, &me.host_mac, &me.mac)?;
            reinject(ctx, me.ifindex, false)
        }
        Dest::Remote(node) => to_member(ctx, &node, exit.leaving),
        Dest::Outside => to_outside(ctx, ip, src, dst, me, exit),
    }
}

/// Into macvlan container `peer` through the ingress of its parent, as if
/// its gateway had sent it.
#[inline(always)]
fn to_slave(ctx: &TcContext, peer: &Endpoint) -> Result<i32, DropReason> {
    set_macs(ctx, &peer.mac, &peer.host_mac)?;
    count_rx(peer, ctx.len());
    reinject(ctx, peer.ifindex, true)
}
