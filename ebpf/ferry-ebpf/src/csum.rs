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

/// RFC 1624 incremental update of a 16-bit one's complement checksum for a
/// 32-bit field changing from `old` to `new`.
#[inline(always)]
fn csum_update4(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let word = |b: [u8; 4], i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut sum = u32::from(!u16::from_be_bytes(check));
    sum += (!word(old, 0) & 0xffff) + (!word(old, 2) & 0xffff) + word(new, 0) + word(new, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Translates an ICMP error about a translated flow: the outer address on
/// `outer` side becomes `new_addr`, and so does the quoted packet's address
/// on the opposite side, with its port (echo id) `new_port`. Fixes the outer
/// IPv4 checksum, the quoted IPv4 checksum, and the ICMP checksum (which
/// covers the quoted bytes). The quoted packet's own L4 checksum is left as
/// it is: receivers do not check it in an error.
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &TcContext,
    err: &crate::parse::IcmpError,
    outer: Side,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    new_port: [u8; 2],
) -> Result<(), DropReason> {
    let fail = |_| DropReason::NatFailed;
    let icmp_csum = err.icmp_off + 2;
    let (outer_off, inner_addr_off, inner_port_off, old_port) = match outer {
        // From outside to a container: outer destination, quoted source.
        Side::Dst => (
            IP_DST_OFF,
            err.inner_ip_off + 12,
            err.inner.off,
            err.inner.sport,
        ),
        // From a container to outside: outer source, quoted destination.
        Side::Src => (
            IP_SRC_OFF,
            err.inner_ip_off + 16,
            err.inner.off + 2,
            err.inner.dport,
        ),
    };
    // For a quoted echo, the id is at +4 whichever side.
    let inner_port_off = if err.inner.proto == IPPROTO_ICMP {
        err.inner.off + 4
    } else {
        inner_port_off
    };
    let old_port = if err.inner.proto == IPPROTO_ICMP {
        err.inner.sport
    } else {
        old_port
    };

    let (old_a, new_a) = (u32::from_ne_bytes(old_addr), u32::from_ne_bytes(new_addr));
    // Outer header: IPv4 checksum only (ICMP has no pseudo-header).
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_a), u64::from(new_a), 4)
        .map_err(fail)?;
    ctx.store(outer_off, &new_addr, 0).map_err(fail)?;

    // Quoted IPv4 header: its checksum moves with the address, and both
    // changes are part of the ICMP payload.
    let inner_check: [u8; 2] = ctx.load(err.inner_ip_off + 10).map_err(fail)?;
    let new_check = csum_update4(inner_check, old_addr, new_addr);
    let (old_c, new_c) = (
        u16::from_ne_bytes(inner_check),
        u16::from_ne_bytes(new_check),
    );
    ctx.l4_csum_replace(icmp_csum, u64::from(old_a), u64::from(new_a), 4)
        .map_err(fail)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_c), u64::from(new_c), 2)
        .map_err(fail)?;
    ctx.store(inner_addr_off, &new_addr, 0).map_err(fail)?;
    ctx.store(err.inner_ip_off + 10, &new_check, 0)
        .map_err(fail)?;

    let (old_p, new_p) = (u16::from_ne_bytes(old_port), u16::from_ne_bytes(new_port));
    ctx.l4_csum_replace(icmp_csum, u64::from(old_p), u64::from(new_p), 2)
        .map_err(fail)?;
    ctx.store(inner_port_off, &new_port, 0).map_err(fail)
}

/// Rewrites only the IPv4 address on `side` (a later fragment: no L4 header
/// here, the first fragment fixed the L4 checksum for the whole datagram).
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    side: Side,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
) -> Result<(), DropReason> {
    let fail = |_| DropReason::NatFailed;
    let off = match side {
        Side::Src => IP_SRC_OFF,
        Side::Dst => IP_DST_OFF,
    };
    let (old_a, new_a) = (u32::from_ne_bytes(old_addr), u32::from_ne_bytes(new_addr));
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_a), u64::from(new_a), 4)
        .map_err(fail)?;
    ctx.store(off, &new_addr, 0).map_err(fail)
}

/// What `ttl_dec` found.
pub enum Ttl {
    /// Decremented; the packet may be forwarded.
    Forward,
    /// 1 or 0: the packet must not be forwarded (the caller lets the host
    /// stack answer with ICMP time exceeded, or drops it).
    Expired,
}

/// Decrements the IPv4 TTL of a packet ferry routes (it acts as the router
/// Docker's host is), fixing the header checksum.
#[inline(always)]
pub fn ttl_dec(ctx: &TcContext) -> Result<Ttl, DropReason> {
    const TTL_OFF: usize = ETH_HLEN + 8;
    let fail = |_| DropReason::NatFailed;
    // TTL and protocol share one 16-bit word of the header checksum.
    let word: [u8; 2] = ctx.load(TTL_OFF).map_err(fail)?;
    if word[0] <= 1 {
        return Ok(Ttl::Expired);
    }
    let new = [word[0] - 1, word[1]];
    ctx.l3_csum_replace(
        IP_CSUM_OFF,
        u64::from(u16::from_ne_bytes(word)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .map_err(fail)?;
    ctx.store(TTL_OFF, &new, 0).map_err(fail)?;
    Ok(Ttl::Forward)
}
