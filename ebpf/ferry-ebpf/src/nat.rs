//! Masquerade: container traffic for the outside leaves with the address
//! of the interface it is routed out of, on a port from the SNAT range.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, TC_ACT_REDIRECT,
        bpf_fib_lookup as FibParams, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_redirect_neigh},
    programs::TcContext,
};
use ferry_common::{
    CT_SNAT, CT_SNAT_REPLY, CtEntry, CtKey, DropReason, IPPROTO_ICMP, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::{
    csum::{Side, rewrite_v4},
    frag,
    parse::L4,
};

const AF_INET: u8 = 2;

/// How a masqueraded packet is routed and which address it takes.
#[derive(Clone, Copy)]
pub enum Way {
    /// By a FIB lookup from the container's veth (forwarding is on there),
    /// with the source address the host would choose (MASQUERADE's).
    Fib,
    /// A macvlan container's: out of its parent uplink `ifindex`, with the
    /// uplink's address `addr` (no FIB lookup helper works there: it
    /// requires forwarding on the device, and uplinks keep it off).
    Parent { ifindex: u32, addr: [u8; 4] },
}
/// Candidate ports tried for a new flow before giving up.
const SNAT_TRIES: u32 = 16;

/// The route for `key` from this veth: egress ifindex, next hop, and (with
/// `BPF_FIB_LOOKUP_SRC`) the source address the host would use there.
/// Neighbour resolution is left to `bpf_redirect_neigh`. No `tot_len` is
/// given: with one the helper checks it against the route's MTU, and a GSO
/// packet's length (up to 64 KiB, segmented later at egress) fails that
/// check; path MTU is the job of the ICMP errors ferry translates.
#[inline(always)]
pub fn route(ctx: &TcContext, key: &CtKey, flags: u32) -> Result<FibParams, DropReason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = key.proto;
    fib.sport = u16::from_ne_bytes(key.sport);
    fib.dport = u16::from_ne_bytes(key.dport);
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(key.saddr);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(key.daddr);
    // SAFETY: the program runs on an skb.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: `fib` is a valid, writable bpf_fib_lookup of the given size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            size_of::<FibParams>() as i32,
            flags | BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(DropReason::NoRoute);
    }
    Ok(fib)
}

/// Sends the (rewritten) packet out of the routed interface; the kernel
/// resolves the next hop's MAC.
#[inline(always)]
pub fn send(fib: &FibParams) -> Result<i32, DropReason> {
    // SAFETY: reading the IPv4 member the FIB lookup wrote.
    let next_hop = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    redirect_neigh(fib.ifindex, next_hop.to_ne_bytes())
}

/// Sends the packet out of `ifindex` to the IPv4 next hop `next_hop`
/// (network order); the kernel resolves its MAC.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32, next_hop: [u8; 4]) -> Result<i32, DropReason> {
    let mut nh = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        // SAFETY: an all-zero union is valid; the IPv4 member is set next.
        __bindgen_anon_1: unsafe { core::mem::zeroed() },
    };
    nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(next_hop);
    // SAFETY: `nh` is a valid bpf_redir_neigh of the given size.
    let rc =
        unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) };
    if rc != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Sends a packet out of `ifindex`, translated already; the kernel
/// routes it there (the route must leave by that device) and resolves the
/// next hop's MAC.
#[inline(always)]
fn send_via(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: a null `params` with length 0 asks the helper to route the
    // packet itself.
    let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if rc != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::RedirectFailed);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Sends a masqueraded packet, translated already, the way of its flow
/// (`route`: the flow before translation).
#[inline(always)]
pub fn send_routed(ctx: &TcContext, route_key: &CtKey, way: Way) -> Result<i32, DropReason> {
    match way {
        Way::Fib => send(&route(ctx, route_key, 0)?),
        Way::Parent { ifindex, .. } => send_via(ifindex),
    }
}

/// A packet of a masqueraded flow already tracked (`CT_SNAT` entry).
#[inline(always)]
pub fn snat_forward(
    ctx: &TcContext,
    l4: &L4,
    key: &CtKey,
    entry: &CtEntry,
    way: Way,
) -> Result<i32, DropReason> {
    rewrite_v4(
        ctx,
        l4,
        Side::Src,
        key.saddr,
        entry.nat_addr,
        entry.nat_port,
    )?;
    send_routed(ctx, key, way)
}

/// The first packet of a flow to the outside: pick the source address by
/// route, allocate a port, record both directions, translate, send.
#[inline(always)]
pub fn snat_new(
    ctx: &TcContext,
    l4: &L4,
    key: &CtKey,
    endpoint_ifindex: u32,
    way: Way,
) -> Result<i32, DropReason> {
    match way {
        Way::Fib => {
            let fib = route(ctx, key, BPF_FIB_LOOKUP_SRC)?;
            // SAFETY: the lookup wrote the IPv4 source member.
            let snat_addr = unsafe { fib.__bindgen_anon_3.ipv4_src }.to_ne_bytes();
            let port = track(key, l4, snat_addr, endpoint_ifindex)?;
            rewrite_v4(ctx, l4, Side::Src, key.saddr, snat_addr, port)?;
            send(&fib)
        }
        Way::Parent { ifindex, addr } => {
            if addr == [0; 4] {
                return Err(DropReason::NoRoute);
            }
            let port = track(key, l4, addr, endpoint_ifindex)?;
            rewrite_v4(ctx, l4, Side::Src, key.saddr, addr, port)?;
            send_via(ifindex)
        }
    }
}

/// Masquerades a new flow `key` to `snat_addr`: claims a port, records
/// both directions (replies are translated back for delivery through
/// `reply_ifindex`, later fragments like this one) and returns the port.
#[inline(always)]
pub fn track(
    key: &CtKey,
    l4: &L4,
    snat_addr: [u8; 4],
    reply_ifindex: u32,
) -> Result<[u8; 2], DropReason> {
    let reply = CtEntry {
        nat_addr: key.saddr,
        nat_port: key.sport,
        kind: CT_SNAT_REPLY,
        ifindex: reply_ifindex,
        ..CtEntry::default()
    };
    let port = allocate(key, snat_addr, &reply)?;
    let forward = CtEntry {
        nat_addr: snat_addr,
        nat_port: port,
        kind: CT_SNAT,
        tcp_flags: l4.tcp_flags,
        ..CtEntry::default()
    };
    crate::ct::insert(key, &forward);
    crate::debug::new_flow("snat", key, snat_addr, port);
    frag::record(key.saddr, key.daddr, l4, &forward);
    Ok(port)
}

/// Claims a port (or ICMP echo id) for `key` translated to `snat_addr`:
/// the reply key (remote, snat_addr, remote port, our port) must be new,
/// in either conntrack table, and the port must not be published. The
/// claim is an insert (`ct::claim`), so two CPUs cannot take the same one.
#[inline(always)]
fn allocate(key: &CtKey, snat_addr: [u8; 4], reply: &CtEntry) -> Result<[u8; 2], DropReason> {
    let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    // SAFETY: a plain helper call.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let icmp = key.proto == IPPROTO_ICMP;
    for i in 0..SNAT_TRIES {
        let port = (u32::from(SNAT_PORT_MIN) + (start + i * 4099) % span) as u16;
        let port = port.to_be_bytes();
        if !icmp && crate::uplink::published(snat_addr, port, key.proto).is_some() {
            continue;
        }
        let reply_key = if icmp {
            CtKey {
                saddr: key.daddr,
                daddr: snat_addr,
                sport: port,
                dport: [0; 2],
                proto: key.proto,
                pad: [0; 3],
            }
        } else {
            CtKey {
                saddr: key.daddr,
                daddr: snat_addr,
                sport: key.dport,
                dport: port,
                proto: key.proto,
                pad: [0; 3],
            }
        };
        if crate::ct::claim(&reply_key, reply) {
            return Ok(port);
        }
    }
    Err(DropReason::SnatExhausted)
}
