//! Programs on each container's host-side veth (`fy<id>`).
//!
//! Both directions are written from the container's point of view.
//!
//! Everything a container sends arrives at `from_container` (tc ingress);
//! everything the host stack delivers to a container leaves through
//! `to_container` (tc egress). Packets redirected from one container to
//! another skip the host stack and both programs on the destination veth, so
//! `from_container` counts them for the destination itself.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use ferry_common::{
    CT_DNAT_REPLY, CT_SNAT, CT_SNAT_REPLY, CtEntry, CtKey, DropReason, Endpoint, FragKey,
    IPPROTO_ICMP, Ipv4Key, NET_INTERNAL, NET_NO_ICC, REMOTE_BLOCK, RemoteNode,
};

use crate::{
    cluster::{remote_of, to_member},
    counters::{Way, count_port, count_rx, count_tx, tc_verdict},
    csum::{Side, Ttl, rewrite_addr, rewrite_icmp_error, rewrite_v4, ttl_dec},
    ct, frag,
    maps::{endpoints, host_addrs, networks},
    nat,
    parse::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ArpHdr, ETH_HLEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPV4_MIN_HLEN,
        IcmpError, Ipv4Hdr, L4, icmp_error_of, l4_of, later_fragment_of, mac_eq, ptr_at, pull,
    },
    uplink,
};

/// tc ingress on a container's host-side veth: every packet the container
/// sends.
///
/// Verdicts: `TC_ACT_REDIRECT` straight into the destination container's
/// `eth0` (`bpf_redirect_peer`) when the destination is a local container on
/// the same network, or back out of this veth with the answer to an ARP
/// request for the gateway; `TC_ACT_OK` to the host stack for anything else
/// from the container (the host itself; later: NAT); `TC_ACT_SHOT` for
/// spoofed, malformed or non-IPv4 traffic and for what the network policy
/// forbids (another network, a peer where icc is off, anything outside an
/// internal network), counted by reason.
///
/// Anti-spoofing covers IPv4 and ARP alike: the frame must come from the
/// container's own MAC on its own veth and name its own address.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    tc_verdict(try_from_container(&ctx))
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    pull(ctx, ETH_HLEN + IPV4_MIN_HLEN);
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the Ethernet header is inside the packet.
    match unsafe { (*eth).proto() } {
        ETH_P_IP => ipv4_from_container(ctx, eth),
        ETH_P_ARP => arp_from_container(ctx, eth),
        _ => Err(DropReason::UnsupportedL3),
    }
}

/// The endpoint that may send from `src`, provided the frame really comes
/// from it: right veth, right source MAC.
#[inline(always)]
fn sender(
    ctx: &TcContext,
    eth: *const EthHdr,
    src: &Ipv4Key,
) -> Result<&'static Endpoint, DropReason> {
    // SAFETY: a hash map value is valid for the duration of the program run
    // (RCU); ferryd only replaces endpoints whole.
    let Some(me) = (unsafe { endpoints.get(src) }) else {
        return Err(DropReason::SpoofedIp);
    };
    // SAFETY: the program runs on an skb, `ctx.skb.skb` is the kernel's
    // `__sk_buff` context pointer.
    if me.ifindex != unsafe { (*ctx.skb.skb).ifindex } {
        return Err(DropReason::SpoofedIp);
    }
    // SAFETY: the caller checked the Ethernet header's bounds.
    if !mac_eq(unsafe { &(*eth).src }, &me.mac) {
        return Err(DropReason::SpoofedMac);
    }
    Ok(me)
}

#[inline(always)]
fn ipv4_from_container(ctx: &TcContext, eth: *mut EthHdr) -> Result<i32, DropReason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr_at`; the header is only read here.
    let (src, dst) = unsafe {
        if (*ip).version() != 4 || (*ip).header_len() < IPV4_MIN_HLEN {
            return Err(DropReason::Malformed);
        }
        (Ipv4Key { ip: (*ip).src }, Ipv4Key { ip: (*ip).dst })
    };
    let me = sender(ctx, eth, &src)?;
    count_tx(me, ctx.len());

    let peer = match destination(me, &dst)? {
        Dest::Peer(peer) => peer,
        Dest::Host => return Ok(TC_ACT_OK),
        Dest::Remote(node) => return to_member(ctx, &node, 0),
        Dest::Outside => return to_outside(ctx, ip, &src, &dst, me, Exit::VETH),
    };
    // Make the frame look as if the peer's gateway had sent it.
    // SAFETY: Ethernet header bounds checked by the caller.
    unsafe {
        (*eth).dst = peer.mac;
        (*eth).src = peer.host_mac;
    }
    count_rx(peer, ctx.len());
    // SAFETY: a plain helper call; it only records the target ifindex.
    let verdict = unsafe { bpf_redirect_peer(peer.ifindex, 0) };
    if verdict != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Where a validated packet from container `me` to `dst` may go.
pub enum Dest {
    /// A local container of its network.
    Peer(&'static Endpoint),
    /// One of the host's addresses.
    Host,
    /// A container of the default network on another member of the
    /// cluster, or that member itself: routed to it as is.
    Remote(RemoteNode),
    /// Anything else: published-port replies and masquerade.
    Outside,
}

/// The network policy, one place for every kind of endpoint: another
/// network's containers, a peer where icc is off, and anything outside an
/// internal network are `policy_denied`. A network has one driver (and a
/// macvlan network one parent), so a peer is wired like the sender. The
/// default network spans the cluster: its containers reach the others'
/// blocks and hosts unchanged; a user-defined network's containers reach
/// no other block, and other hosts only masqueraded, as anything outside.
#[inline(always)]
pub fn destination(me: &Endpoint, dst: &Ipv4Key) -> Result<Dest, DropReason> {
    let policy = network_flags(me.net_id);
    // SAFETY: hash map values are valid for the program run (RCU); ferryd
    // only replaces endpoints whole.
    if let Some(peer) = unsafe { endpoints.get(dst) } {
        if peer.net_id != me.net_id || policy & NET_NO_ICC != 0 {
            return Err(DropReason::PolicyDenied);
        }
        return Ok(Dest::Peer(peer));
    }
    // An internal network's containers reach only each other.
    if policy & NET_INTERNAL != 0 {
        return Err(DropReason::PolicyDenied);
    }
    // SAFETY: as above; only presence is checked.
    if unsafe { host_addrs.get(dst) }.is_some() {
        return Ok(Dest::Host);
    }
    if let Some(node) = remote_of(dst.ip) {
        if me.net_id == 0 {
            return Ok(Dest::Remote(node));
        }
        if node.kind == REMOTE_BLOCK {
            return Err(DropReason::PolicyDenied);
        }
    }
    Ok(Dest::Outside)
}

/// The `NET_*` policy bits of a network. The default network (`net_id`
/// 0) never has an entry (ferryd numbers user-defined networks from 1), so
/// its packets, most of them, skip the lookup.
#[inline(always)]
fn network_flags(net_id: u32) -> u32 {
    if net_id == 0 {
        return 0;
    }
    // SAFETY: hash map values are valid for the program run; copied out.
    unsafe { networks.get(net_id) }.map_or(0, |p| p.flags)
}

/// Where the hook deciding a container's packet runs, and how what it
/// masquerades is routed.
#[derive(Clone, Copy)]
pub struct Exit {
    /// The device whose egress hook runs; 0 on a veth's ingress.
    pub leaving: u32,
    pub way: nat::Way,
}

impl Exit {
    /// The ingress of a container's veth.
    pub const VETH: Self = Self {
        leaving: 0,
        way: nat::Way::Fib,
    };
}

/// A validated packet from container `me`, neither for a local container
/// nor for one of the host's addresses: a reply through a published port,
/// or masqueraded. The host stack never sees (and so never forwards)
/// anything else from a container: forwarding is on for the host-side veth
/// only so that `bpf_fib_lookup` answers, and this function decides every
/// packet itself.
#[inline(always)]
pub fn to_outside(
    ctx: &TcContext,
    ip: *const Ipv4Hdr,
    src: &Ipv4Key,
    dst: &Ipv4Key,
    me: &Endpoint,
    exit: Exit,
) -> Result<i32, DropReason> {
    // Parse first: the TTL rewrite below invalidates packet pointers.
    let fragment = later_fragment_of(ip);
    let err = match fragment {
        None => icmp_error_of(ctx, ip),
        Some(_) => None,
    };
    let l4 = match (&fragment, &err) {
        (None, None) => Some(l4_of(ctx, ip).ok_or(DropReason::UnsupportedL4)?),
        _ => None,
    };
    // Everything below is routed by ferry: it is the router hop, so an
    // expiring packet from a veth goes to the host stack (forwarding is on
    // for this veth), which answers with ICMP time exceeded: traceroute
    // works. On an uplink's egress there is no stack left to answer.
    if let Ttl::Expired = ttl_dec(ctx)? {
        if exit.leaving != 0 {
            return Err(DropReason::TtlExpired);
        }
        return Ok(TC_ACT_OK);
    }
    if let Some(fragment) = fragment {
        return later_fragment_out(ctx, &fragment, exit);
    }
    if let Some(err) = err {
        return error_from_container(ctx, &err, src, dst, exit);
    }
    let Some(l4) = l4 else {
        return Err(DropReason::UnsupportedL4);
    };
    let key = ct::key_of(src.ip, dst.ip, &l4);
    match ct::lookup_seen(&key, l4.tcp_flags) {
        Some(entry) if entry.kind == CT_DNAT_REPLY => {
            count_port(
                entry.nat_addr,
                entry.nat_port,
                l4.proto,
                Way::Out,
                ctx.len(),
            );
            frag::record(src.ip, dst.ip, &l4, &entry);
            uplink::reply_to_client(ctx, &l4, src.ip, &entry, exit.leaving)
        }
        Some(entry) if entry.kind == CT_SNAT => {
            frag::record(src.ip, dst.ip, &l4, &entry);
            nat::snat_forward(ctx, &l4, &key, &entry, exit.way)
        }
        Some(entry) if entry.kind == CT_SNAT_REPLY => hairpin_reply(ctx, &l4, &key, &entry, exit),
        _ => nat::snat_new(ctx, &l4, &key, me.ifindex, exit.way),
    }
}

/// A reply to a connection `local_ingress` brought in from `lo`, addressed
/// to the gateway address it was masqueraded to: the destination goes back
/// to the local socket's (`addr:port`), and the flow's published-port entry
/// does the rest, as for a client outside (its `ifindex` is `lo`). Should
/// that half have been evicted, the packet drops as `nat_failed` and the
/// client's retransmission makes a new pair.
#[inline(always)]
fn hairpin_reply(
    ctx: &TcContext,
    l4: &L4,
    key: &CtKey,
    entry: &CtEntry,
    exit: Exit,
) -> Result<i32, DropReason> {
    let (addr, port) = (entry.nat_addr, entry.nat_port);
    let local = CtKey {
        daddr: addr,
        dport: port,
        ..*key
    };
    let Some(published) = ct::lookup_seen(&local, l4.tcp_flags).filter(|e| e.kind == CT_DNAT_REPLY)
    else {
        return Err(DropReason::NatFailed);
    };
    rewrite_v4(ctx, l4, Side::Dst, key.daddr, addr, port)?;
    count_port(
        published.nat_addr,
        published.nat_port,
        l4.proto,
        Way::Out,
        ctx.len(),
    );
    uplink::reply_to_client(ctx, l4, key.saddr, &published, exit.leaving)
}

/// A later fragment of a datagram a container sends: translated like its
/// first fragment was, or dropped (counted) if that one was not seen.
#[inline(always)]
fn later_fragment_out(ctx: &TcContext, fragment: &FragKey, exit: Exit) -> Result<i32, DropReason> {
    let Some(entry) = frag::lookup(fragment) else {
        return Err(DropReason::FragmentUnknown);
    };
    let route = CtKey {
        saddr: fragment.saddr,
        daddr: fragment.daddr,
        sport: [0; 2],
        dport: [0; 2],
        proto: fragment.proto,
        pad: [0; 3],
    };
    if !leaves(&entry) {
        return Err(DropReason::FragmentUnknown);
    }
    rewrite_addr(ctx, Side::Src, fragment.saddr, entry.nat_addr)?;
    leave_like(ctx, &entry, &route, exit)
}

/// An ICMP error a container sends about a translated flow (e.g. port
/// unreachable to a published-port client, fragmentation needed): the
/// quoted packet carries the container's address where the peer saw the
/// published or masquerade address; both are translated back and the error
/// leaves the way the flow does. Errors about nothing ferry translated are
/// dropped as untranslatable.
#[inline(always)]
fn error_from_container(
    ctx: &TcContext,
    err: &IcmpError,
    src: &Ipv4Key,
    dst: &Ipv4Key,
    exit: Exit,
) -> Result<i32, DropReason> {
    let Some(entry) = ct::lookup(&ct::key_of_quoted(err)) else {
        return Err(DropReason::UnsupportedL4);
    };
    let route = CtKey {
        saddr: src.ip,
        daddr: dst.ip,
        sport: [0; 2],
        dport: [0; 2],
        proto: IPPROTO_ICMP,
        pad: [0; 3],
    };
    if !leaves(&entry) {
        return Err(DropReason::UnsupportedL4);
    }
    rewrite_icmp_error(ctx, err, Side::Src, src.ip, entry.nat_addr, entry.nat_port)?;
    leave_like(ctx, &entry, &route, exit)
}

/// Whether `leave_like` knows the way of a flow's (`entry`) packets.
#[inline(always)]
fn leaves(entry: &CtEntry) -> bool {
    entry.kind == CT_DNAT_REPLY || entry.kind == CT_SNAT
}

/// Sends a container's packet, translated already, out the way its flow
/// (`entry`, one `leaves` knows) goes: back to a published-port client, or
/// routed by `route`, the flow before translation (masquerade; the FIB
/// lookup reads its parameters, not the packet).
#[inline(always)]
fn leave_like(
    ctx: &TcContext,
    entry: &CtEntry,
    route: &CtKey,
    exit: Exit,
) -> Result<i32, DropReason> {
    if entry.kind == CT_DNAT_REPLY {
        return uplink::send_to_client(ctx, entry, exit.leaving);
    }
    nat::send_routed(ctx, route, exit.way)
}

/// ARP from a container: validated like IPv4; a request for any address but
/// its own is answered here with the host side's MAC (every packet of a
/// container leaves through its veth, whatever its next hop: 169.254.1.1
/// for ferry's containers, the network's gateway for those Docker
/// configures, and no host route or proxy_arp is needed for either).
/// Anything else (replies, duplicate address probes) goes to the host,
/// whose entries for containers are permanent and cannot be poisoned.
#[inline(always)]
fn arp_from_container(ctx: &TcContext, eth: *mut EthHdr) -> Result<i32, DropReason> {
    let arp: *mut ArpHdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (valid, src) = unsafe { ((*arp).is_ipv4_over_ethernet(), Ipv4Key { ip: (*arp).spa }) };
    if !valid {
        return Err(DropReason::UnsupportedL3);
    }
    let me = sender(ctx, eth, &src)?;
    // SAFETY: bounds checked by `ptr_at`.
    if !mac_eq(unsafe { &(*arp).sha }, &me.mac) {
        return Err(DropReason::SpoofedMac);
    }
    count_tx(me, ctx.len());
    // SAFETY: bounds checked by `ptr_at`.
    let (asks_other, target) = unsafe {
        (
            (*arp).oper() == ARP_OP_REQUEST && (*arp).tpa != (*arp).spa,
            (*arp).tpa,
        )
    };
    if !asks_other {
        return Ok(TC_ACT_OK);
    }
    // Turn the request into the reply, in place, and send it back.
    // SAFETY: both headers were bounds checked above.
    unsafe {
        (*arp).oper = ARP_OP_REPLY.to_be_bytes();
        (*arp).tha = me.mac;
        (*arp).tpa = (*arp).spa;
        (*arp).sha = me.host_mac;
        (*arp).spa = target;
        (*eth).dst = me.mac;
        (*eth).src = me.host_mac;
    }
    // SAFETY: a plain helper call; it only records the target ifindex.
    let verdict = unsafe { bpf_redirect(me.ifindex, 0) };
    if verdict != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// tc egress on a container's host-side veth: what the host stack delivers
/// to the container. Counts it for the destination endpoint; always
/// `TC_ACT_OK` (this hook only observes).
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    pull(&ctx, ETH_HLEN + IPV4_MIN_HLEN);
    let Ok(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return TC_ACT_OK;
    };
    // SAFETY: bounds checked by `ptr_at`.
    if unsafe { (*eth).proto() } != ETH_P_IP {
        return TC_ACT_OK;
    }
    let Ok(ip) = ptr_at::<Ipv4Hdr>(&ctx, ETH_HLEN) else {
        return TC_ACT_OK;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let dst = Ipv4Key {
        ip: unsafe { (*ip).dst },
    };
    // SAFETY: hash map values are valid for the program run.
    if let Some(ep) = unsafe { endpoints.get(dst) } {
        count_rx(ep, ctx.len());
    }
    TC_ACT_OK
}
