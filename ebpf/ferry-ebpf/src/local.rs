//! The program on the host's loopback: published ports for local sockets
//! the cgroup hooks do not translate (processes outside the hooked cgroup).
//!
//! A connection from the host to one of its own addresses, 127.0.0.1 or
//! any other, travels over `lo`. Here it gets the published port's DNAT,
//! tracked like a connection from outside (replies go back out of `lo`),
//! and is then masqueraded to the gateway address: the container could not
//! answer a loopback or host source itself. Its replies are addressed to
//! the gateway and come back through `from_container`, which undoes both
//! translations (`lxc::hairpin_reply`).

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use ferry_common::{CT_DNAT, CT_SNAT, CtKey, DropReason, GATEWAY_V4, IPPROTO_ICMP, PortTarget};

use crate::{
    counters::{Way, count_port, tc_verdict},
    csum::{Side, rewrite_v4},
    ct, nat,
    parse::{ipv4_frame, l4_of},
    uplink::{endpoint_of, into_container, published, track_published},
};

/// tc ingress on `lo` in ferryd's namespace: every packet a local socket
/// sends to a local address.
///
/// Verdicts: `TC_ACT_REDIRECT` into a container (`bpf_redirect_peer`) for a
/// connection to a published port, after rewriting the destination to the
/// container and the source to the gateway address; `TC_ACT_OK` for
/// everything else (ordinary loopback traffic, after two map lookups that
/// miss); `TC_ACT_SHOT` only when a rewrite fails or no masquerade port is
/// free, counted.
#[classifier]
pub fn local_ingress(ctx: TcContext) -> i32 {
    tc_verdict(try_local_ingress(&ctx))
}

#[inline(always)]
fn try_local_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    const PASS: Result<i32, DropReason> = Ok(TC_ACT_OK);
    let Some((eth, ip)) = ipv4_frame(ctx) else {
        return PASS;
    };
    // SAFETY: bounds checked by `ipv4_frame`.
    let (saddr, daddr) = unsafe { ((*ip).src, (*ip).dst) };
    // Loopback never fragments (MTU 64 KiB): a datagram whose ports are
    // not in this packet is no published-port traffic.
    let Some(l4) = l4_of(ctx, ip).filter(|l4| l4.proto != IPPROTO_ICMP) else {
        return PASS;
    };
    // Every packet here is for the host, so the published-port lookup comes
    // first: for ordinary loopback traffic it is the only cost.
    let Some(published) = published(daddr, l4.dport, l4.proto) else {
        return PASS;
    };
    let key = ct::key_of(saddr, daddr, &l4);
    let (target, new) = match ct::lookup_seen(&key, l4.tcp_flags) {
        Some(entry) if entry.kind == CT_DNAT => (
            PortTarget {
                ip: entry.nat_addr,
                port: entry.nat_port,
                pad: [0; 2],
            },
            false,
        ),
        Some(_) => return PASS,
        None => (published, true),
    };
    let Some(endpoint) = endpoint_of(target.ip) else {
        // The container went away; the host stack answers (reset).
        return PASS;
    };
    if new {
        track_published(ctx, eth, &key, &l4, &target, &endpoint);
    }
    count_port(daddr, l4.dport, l4.proto, Way::In, ctx.len());
    // The same flow after the DNAT, masqueraded to the gateway address.
    let inner = CtKey {
        daddr: target.ip,
        dport: target.port,
        ..key
    };
    let port = match ct::lookup_seen(&inner, l4.tcp_flags) {
        Some(entry) if entry.kind == CT_SNAT => entry.nat_port,
        // SAFETY: the program runs on an skb.
        _ => nat::track(&inner, &l4, GATEWAY_V4, unsafe { (*ctx.skb.skb).ifindex })?,
    };
    rewrite_v4(ctx, &l4, Side::Dst, daddr, target.ip, target.port)?;
    rewrite_v4(ctx, &l4, Side::Src, saddr, GATEWAY_V4, port)?;
    into_container(ctx, &endpoint)
}
