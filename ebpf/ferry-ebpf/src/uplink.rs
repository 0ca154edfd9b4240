//! The program on each uplink: published ports.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use ferry_common::{
    CT_DNAT, CT_DNAT_REPLY, CT_SNAT_REPLY, CtEntry, CtKey, DropReason, EP_MACVLAN, Endpoint,
    FragKey, Ipv4Key, MARK_REINJECTED, PortKey, PortTarget,
};

use crate::{
    cluster::from_member,
    counters::{Way, count_port, count_rx, tc_verdict},
    csum::{Side, Ttl, rewrite_addr, rewrite_icmp_error, rewrite_v4, set_macs, ttl_dec},
    ct, frag,
    maps::{endpoints, host_addrs, portmap},
    parse::{EthHdr, IcmpError, L4, icmp_error_of, ipv4_frame, l4_of, later_fragment_of},
};

/// tc ingress on an uplink: everything arriving from outside.
///
/// Verdicts: `TC_ACT_REDIRECT` into a container (`bpf_redirect_peer`) for a
/// tracked flow or a new connection to a published port, after rewriting
/// the destination to the container's address and port (conntrack entries
/// for both directions are created on the first packet); `TC_ACT_OK` for
/// everything else, which the host stack handles as if ferry were not
/// there; `TC_ACT_SHOT` only when a rewrite fails, counted.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    tc_verdict(try_uplink_ingress(&ctx))
}

#[inline(always)]
fn try_uplink_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    const PASS: Result<i32, DropReason> = Ok(TC_ACT_OK);
    let Some((eth, ip)) = ipv4_frame(ctx) else {
        return PASS;
    };
    // SAFETY: bounds checked by `ipv4_frame`.
    let (saddr, daddr) = unsafe { ((*ip).src, (*ip).dst) };
    // Everything ferry translates here is addressed to the host: published
    // ports, masquerade replies, their ICMP errors and fragments. Other
    // traffic passes without a single further lookup.
    // SAFETY: hash map values are valid for the program run; only presence
    // is checked.
    if unsafe { host_addrs.get(Ipv4Key { ip: daddr }) }.is_none() {
        return not_for_host(ctx, eth, saddr, daddr);
    }
    if let Some(fragment) = later_fragment_of(ip) {
        return later_fragment_in(ctx, &fragment);
    }
    if let Some(err) = icmp_error_of(ctx, ip) {
        return error_to_container(ctx, &err);
    }
    let Some(l4) = l4_of(ctx, ip) else {
        return PASS;
    };
    let key = ct::key_of(saddr, daddr, &l4);
    if let Some(entry) = ct::lookup_seen(&key, l4.tcp_flags) {
        // Published-port requests and replies to masqueraded flows both go
        // to a container, rewritten the same way.
        if entry.kind == CT_DNAT || entry.kind == CT_SNAT_REPLY {
            let Some(endpoint) = endpoint_of(entry.nat_addr) else {
                // The container went away; the host stack answers (reset).
                return PASS;
            };
            if entry.kind == CT_DNAT {
                count_port(daddr, l4.dport, l4.proto, Way::In, ctx.len());
            }
            return deliver(
                ctx,
                &l4,
                saddr,
                daddr,
                &endpoint,
                entry.nat_addr,
                entry.nat_port,
            );
        }
        return PASS;
    }
    let Some(target) = published(daddr, l4.dport, l4.proto) else {
        return PASS;
    };
    let Some(endpoint) = endpoint_of(target.ip) else {
        return PASS;
    };
    track_published(ctx, eth, &key, &l4, &target, &endpoint);
    count_port(daddr, l4.dport, l4.proto, Way::In, ctx.len());
    deliver(ctx, &l4, saddr, daddr, &endpoint, target.ip, target.port)
}

/// A packet for an address that is not the host's. One for a container of
/// the default network from another member of the cluster (its block or
/// its own address, from its MAC) goes into the container as is. One for
/// a macvlan container passes (to macvlan's receive handler, which
/// delivers it by MAC) only if `uplink_egress` re-injected it, from the
/// host or another container: from outside, containers are reached through
/// published ports only. Everything else passes to the host stack, which
/// does not forward it; a container's own address costs the one endpoint
/// lookup.
#[inline(always)]
fn not_for_host(
    ctx: &TcContext,
    eth: *const EthHdr,
    saddr: [u8; 4],
    daddr: [u8; 4],
) -> Result<i32, DropReason> {
    let Some(endpoint) = endpoint_of(daddr) else {
        return Ok(TC_ACT_OK);
    };
    if endpoint.flags & EP_MACVLAN == 0 {
        if endpoint.net_id == 0 && from_member(eth, saddr) {
            return into_container(ctx, &endpoint);
        }
        return Ok(TC_ACT_OK);
    }
    // SAFETY: the program runs on an skb.
    if unsafe { (*ctx.skb.skb).mark } != MARK_REINJECTED {
        return Err(DropReason::OutsideToContainer);
    }
    // The mark was only a note to this program; the container never sees it.
    ctx.set_mark(0);
    Ok(TC_ACT_OK)
}

/// Records both directions of a new connection `key` to a published port
/// leading to `target` (in `endpoint`): requests go to the container, and
/// replies back out of the interface this one came in on, to the MAC it
/// came from. Reads the frame's MACs, so it runs before any rewrite.
#[inline(always)]
pub fn track_published(
    ctx: &TcContext,
    eth: *const EthHdr,
    key: &CtKey,
    l4: &L4,
    target: &PortTarget,
    endpoint: &Endpoint,
) {
    // SAFETY: the caller checked the Ethernet header's bounds and has not
    // rewritten the packet yet.
    let (client_mac, own_mac) = unsafe { ((*eth).src, (*eth).dst) };
    // SAFETY: the program runs on an skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let reply = CtKey {
        saddr: target.ip,
        daddr: key.saddr,
        sport: target.port,
        dport: key.sport,
        proto: key.proto,
        pad: [0; 3],
    };
    ct::create(
        key,
        &CtEntry {
            nat_addr: target.ip,
            nat_port: target.port,
            kind: CT_DNAT,
            tcp_flags: l4.tcp_flags,
            ifindex: endpoint.ifindex,
            ..CtEntry::default()
        },
        &reply,
        &CtEntry {
            nat_addr: key.daddr,
            nat_port: key.dport,
            kind: CT_DNAT_REPLY,
            ifindex,
            dmac: client_mac,
            smac: own_mac,
            ..CtEntry::default()
        },
    );
    crate::debug::new_flow("dnat", key, target.ip, target.port);
}

/// The publish of `port`/`proto` on host address `ip` (or loopback): one
/// on that address first, then one on every address. Every hook that
/// meets a published port asks here.
#[inline(always)]
pub fn published(ip: [u8; 4], port: [u8; 2], proto: u8) -> Option<PortTarget> {
    let mut key = PortKey {
        ip,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: hash map values are valid for the program run; copied out.
    if let Some(target) = unsafe { portmap.get(key) } {
        return Some(*target);
    }
    key.ip = [0; 4];
    // SAFETY: as above.
    unsafe { portmap.get(key) }.copied()
}

/// An ICMP error from outside about a flow translated to a container
/// (published port or masquerade): found by its quoted packet, reversed,
/// translated and delivered; anything else passes.
#[inline(always)]
fn error_to_container(ctx: &TcContext, err: &IcmpError) -> Result<i32, DropReason> {
    let key = ct::key_of_quoted(err);
    let Some(entry) = ct::lookup(&key) else {
        return Ok(TC_ACT_OK);
    };
    if entry.kind != CT_DNAT && entry.kind != CT_SNAT_REPLY {
        return Ok(TC_ACT_OK);
    }
    let Some(endpoint) = endpoint_of(entry.nat_addr) else {
        return Ok(TC_ACT_OK);
    };
    rewrite_icmp_error(
        ctx,
        err,
        Side::Dst,
        err.inner_saddr,
        entry.nat_addr,
        entry.nat_port,
    )?;
    into_container(ctx, &endpoint)
}

/// A later fragment of a datagram whose first fragment went to a container:
/// same destination, same way in. Fragments of anything else (the host's
/// own traffic) pass.
#[inline(always)]
fn later_fragment_in(ctx: &TcContext, fragment: &FragKey) -> Result<i32, DropReason> {
    let Some(entry) = frag::lookup(fragment).filter(|e| e.kind == CT_DNAT) else {
        return Ok(TC_ACT_OK);
    };
    let Some(endpoint) = endpoint_of(entry.nat_addr) else {
        return Ok(TC_ACT_OK);
    };
    rewrite_addr(ctx, Side::Dst, fragment.daddr, entry.nat_addr)?;
    into_container(ctx, &endpoint)
}

/// The local container at `addr`, copied out of the map.
#[inline(always)]
pub fn endpoint_of(addr: [u8; 4]) -> Option<Endpoint> {
    // SAFETY: hash map values are valid for the program run; copied out.
    unsafe { endpoints.get(Ipv4Key { ip: addr }) }.copied()
}

/// Rewrites the destination to container `endpoint` (at `to_addr`) and
/// redirects into it.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    l4: &L4,
    saddr: [u8; 4],
    daddr: [u8; 4],
    endpoint: &Endpoint,
    to_addr: [u8; 4],
    to_port: [u8; 2],
) -> Result<i32, DropReason> {
    let done = CtEntry {
        nat_addr: to_addr,
        kind: CT_DNAT,
        ..CtEntry::default()
    };
    frag::record(saddr, daddr, l4, &done);
    rewrite_v4(ctx, l4, Side::Dst, daddr, to_addr, to_port)?;
    into_container(ctx, endpoint)
}

/// Sends a packet already addressed to container `endpoint` into it. Only
/// ingress hooks call it.
#[inline(always)]
pub fn into_container(ctx: &TcContext, endpoint: &Endpoint) -> Result<i32, DropReason> {
    // The host is the router hop into the container, as with Docker.
    if let Ttl::Expired = ttl_dec(ctx)? {
        return Err(DropReason::TtlExpired);
    }
    set_macs(ctx, &endpoint.mac, &endpoint.host_mac)?;
    count_rx(endpoint, ctx.len());
    if endpoint.flags & EP_MACVLAN != 0 {
        // On the parent's own ingress macvlan's receive handler, which runs
        // right after this hook in the same pass, delivers the packet by
        // its new destination MAC: no redirect, no queue. From anywhere
        // else (loopback) the packet is handed to that ingress.
        // SAFETY: the program runs on an skb.
        if unsafe { (*ctx.skb.skb).ifindex } == endpoint.ifindex {
            return Ok(TC_ACT_OK);
        }
        return reinject(ctx, endpoint.ifindex, true);
    }
    // SAFETY: a plain helper call.
    if unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// The loopback device's ifindex, the same in every namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Hands a packet to the ingress of `ifindex` (a macvlan parent), where
/// macvlan delivers it by destination MAC; `mark`ed when it is for a
/// container (see `not_for_host`).
#[inline(always)]
pub fn reinject(ctx: &TcContext, ifindex: u32, mark: bool) -> Result<i32, DropReason> {
    if mark {
        ctx.set_mark(MARK_REINJECTED);
    }
    // SAFETY: a plain helper call.
    if unsafe { bpf_redirect(ifindex, u64::from(BPF_F_INGRESS)) } != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Reverse translation of a reply from a container to a published-port
/// client: rewrite the source back to the published address and port and
/// send it out of the uplink the request came in on, to the next hop it
/// came from. Called by `from_container` and `uplink_egress` after their
/// checks; `leaving` is the device whose egress hook runs (0 for an
/// ingress hook).
#[inline(always)]
pub fn reply_to_client(
    ctx: &TcContext,
    l4: &L4,
    saddr: [u8; 4],
    entry: &CtEntry,
    leaving: u32,
) -> Result<i32, DropReason> {
    rewrite_v4(ctx, l4, Side::Src, saddr, entry.nat_addr, entry.nat_port)?;
    send_to_client(ctx, entry, leaving)
}

/// Sends a packet out of the uplink a published-port request came in on,
/// to the next hop it came from. When that uplink is `leaving`, the device
/// whose egress hook runs (a macvlan container's reply), the packet simply
/// goes on.
#[inline(always)]
pub fn send_to_client(ctx: &TcContext, entry: &CtEntry, leaving: u32) -> Result<i32, DropReason> {
    set_macs(ctx, &entry.dmac, &entry.smac)?;
    if entry.ifindex == leaving {
        return Ok(TC_ACT_OK);
    }
    // From an egress hook the packet still carries its sender's route
    // (the container's); sent out of loopback it would come back in with
    // that route and never reach a local socket. Into loopback's ingress
    // instead, where the route is dropped, as a veth crossing drops it.
    let flags = if leaving != 0 && entry.ifindex == LOOPBACK_IFINDEX {
        u64::from(BPF_F_INGRESS)
    } else {
        0
    };
    // SAFETY: a plain helper call.
    if unsafe { bpf_redirect(entry.ifindex, flags) } != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}
