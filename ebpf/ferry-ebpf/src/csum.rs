//! Address and port rewrites with incremental checksum fixes, through the
//! kernel's csum helpers: they handle CHECKSUM_PARTIAL skbs (veth with tx
//! offload) and CHECKSUM_COMPLETE correctly, which hand-written arithmetic
//! on the checksum field would not.

use aya_ebpf::programs::TcContext;
use ferry_common::{DropReason, IPPROTO_ICMP, IPPROTO_UDP};

use crate::parse::{ETH_HLEN, L4};

/// `BPF_F_PSEUDO_HDR`: the field is part of the L4 pseudo-header.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `BPF_F_MARK_MANGLED_0`: a UDP checksum of 0 means "none": leave it, and
/// never produce 0 (write 0xffff instead).
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum Side {
    Src,
    Dst,
}

/// Rewrites the IPv4 address and the L4 port of one side of the packet
/// described by `l4`, whose current values are `old_addr` and the port in
/// `l4`. Packet pointers taken before this call are invalid after it.
#[inline(always)]
pub fn rewrite_v4(
    ctx: &TcContext,
    l4: &L4,
    side: Side,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    new_port: [u8; 2],
) -> Result<(), DropReason> {
    let (addr_off, mut port_off, mut old_port) = match side {
        Side::Src => (IP_SRC_OFF, l4.off, l4.sport),
        Side::Dst => (IP_DST_OFF, l4.off + 2, l4.dport),
    };
    let icmp = l4.proto == IPPROTO_ICMP;
    if icmp {
        // The echo id plays the port, in both directions; the ICMP
        // checksum has no pseudo-header, so the address does not enter it.
        (port_off, old_port) = (l4.off + 4, l4.sport);
    }
    let mangled = if l4.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    // The helpers take the old and new field values as they are in memory
    // (network order), widened to u64.
    let (old_a, new_a) = (u32::from_ne_bytes(old_addr), u32::from_ne_bytes(new_addr));
    let (old_p, new_p) = (u16::from_ne_bytes(old_port), u16::from_ne_bytes(new_port));
    let fail = |_| DropReason::NatFailed;
    if !icmp {
        ctx.l4_csum_replace(
            l4.csum_off,
            u64::from(old_a),
            u64::from(new_a),
            BPF_F_PSEUDO_HDR | mangled | 4,
        )
        .map_err(fail)?;
    }
    ctx.l4_csum_replace(l4.csum_off, u64::from(old_p), u64::from(new_p), mangled | 2)
        .map_err(fail)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_a), u64::from(new_a), 4)
        .map_err(fail)?;
    ctx.store(addr_off, &new_addr, 0).map_err(fail)?;
    ctx.store(port_off, &new_port, 0).map_err(fail)
}

/// Sets both MACs of the frame (after a rewrite, when pointers are stale).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), DropReason> {
    ctx.store(0, dst, 0).map_err(|_| DropReason::NatFailed)?;
    ctx.store(6, src, 0).map_err(|_| DropReason::NatFailed)
}
