//! The early path on each uplink: drop, before an skb exists, what can
//! never be valid from outside in ferry's model.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use ferry_common::{DropReason, Ipv4Key};

use crate::{
    cluster::from_member,
    counters::count_drop,
    maps::endpoints,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IPV4_MIN_HLEN, Ipv4Hdr, ptr_at},
};

/// XDP on an uplink: everything arriving from outside, before the tc
/// programs and before the host stack.
///
/// Verdicts: `XDP_DROP`, counted, for frames too short for Ethernet,
/// malformed IPv4 (version, IHL, total length beyond the frame), packets
/// with a container's address as source (spoofed: containers are never
/// outside) or as destination (containers are reached only through
/// published ports and masquerade, both addressed to the host), unless it
/// comes from another member of the cluster (its block or own address,
/// from its MAC); `XDP_PASS`
/// for everything else, untouched.
#[xdp]
pub fn xdp_prefilter(ctx: XdpContext) -> u32 {
    match try_prefilter(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason);
            XDP_DROP
        }
    }
}

#[inline(always)]
fn try_prefilter(ctx: &XdpContext) -> Result<u32, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    if unsafe { (*eth).proto() } != ETH_P_IP {
        return Ok(XDP_PASS);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (version, ihl, tot_len, src, dst) = unsafe {
        (
            (*ip).version(),
            (*ip).header_len(),
            usize::from(u16::from_be_bytes((*ip).tot_len)),
            (*ip).src,
            (*ip).dst,
        )
    };
    let frame_len = ctx.data_end() - ctx.data();
    if version != 4 || ihl < IPV4_MIN_HLEN || tot_len < ihl || ETH_HLEN + tot_len > frame_len {
        return Err(DropReason::Malformed);
    }
    // SAFETY: hash map values are valid for the program run; only presence
    // is checked.
    if unsafe { endpoints.get(Ipv4Key { ip: src }) }.is_some() {
        return Err(DropReason::OutsideSpoofed);
    }
    // SAFETY: as above. Other members of the cluster reach containers
    // directly (tc ingress delivers them).
    if unsafe { endpoints.get(Ipv4Key { ip: dst }) }.is_some() && !from_member(eth, src) {
        return Err(DropReason::OutsideToContainer);
    }
    Ok(XDP_PASS)
}
