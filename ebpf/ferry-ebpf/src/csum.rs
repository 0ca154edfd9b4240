//! Address and port rewrites with incremental checksum fixes.
//!
//! The L4 checksum goes through the kernel's csum helpers: they know the
//! skb's checksum state (CHECKSUM_PARTIAL from a veth with tx offload holds
//! only the pseudo-header sum in the field, CHECKSUM_COMPLETE needs
//! `skb->csum` moved too), which a program cannot see. Everything else, the
//! MACs, the IPv4 header and its checksum (which no offload touches), and
//! the L4 port, is written in place through bounds-checked pointers: one
//! helper call costs about as much as a whole header's worth of direct
//! stores, and this runs for every translated packet.

use aya_ebpf::programs::TcContext;
use ferry_common::{DropReason, IPPROTO_ICMP, IPPROTO_UDP};

use crate::parse::{ETH_HLEN, EthHdr, Ipv4Hdr, L4, ptr_at};

/// `BPF_F_PSEUDO_HDR`: the field is part of the L4 pseudo-header.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `BPF_F_MARK_MANGLED_0`: a UDP checksum of 0 means "none": leave it, and
/// never produce 0 (write 0xffff instead).
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// A header in the linear data, for writing; `NatFailed` if it is not
/// there (callers parsed it from the linear data, so it always is).
#[inline(always)]
fn header<T>(ctx: &TcContext, off: usize) -> Result<*mut T, DropReason> {
    ptr_at(ctx, off).map_err(|_| DropReason::NatFailed)
}

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
    let (mut port_off, mut old_port) = match side {
        Side::Src => (l4.off, l4.sport),
        Side::Dst => (l4.off + 2, l4.dport),
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
    // The helpers may have moved the data: pointers are taken afresh.
    set_addr(ctx, side, old_addr, new_addr)?;
    let port: *mut [u8; 2] = header(ctx, port_off)?;
    // SAFETY: bounds checked by `header`.
    unsafe { *port = new_port };
    Ok(())
}

/// Writes the IPv4 address on `side` (currently `old_addr`) and moves the
/// header checksum with it.
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    side: Side,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
) -> Result<(), DropReason> {
    let ip: *mut Ipv4Hdr = header(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `header`.
    unsafe {
        (*ip).check = csum_update((*ip).check, old_addr, new_addr);
        match side {
            Side::Src => (*ip).src = new_addr,
            Side::Dst => (*ip).dst = new_addr,
        }
    }
    Ok(())
}

/// Sets both MACs of the frame (after a rewrite, when pointers are stale).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), DropReason> {
    let eth: *mut EthHdr = header(ctx, 0)?;
    // SAFETY: bounds checked by `header`.
    unsafe {
        (*eth).dst = *dst;
        (*eth).src = *src;
    }
    Ok(())
}

/// RFC 1624 incremental update (eqn. 3) of a 16-bit one's complement
/// checksum for a field of `N` bytes (N even, 16-bit aligned in the summed
/// data) changing from `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
fn csum_update<const N: usize>(check: [u8; 2], old: [u8; N], new: [u8; N]) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(check));
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
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
    let (inner_addr_off, inner_port_off, old_port) = match outer {
        // From outside to a container: outer destination, quoted source.
        Side::Dst => (err.inner_ip_off + 12, err.inner.off, err.inner.sport),
        // From a container to outside: outer source, quoted destination.
        Side::Src => (err.inner_ip_off + 16, err.inner.off + 2, err.inner.dport),
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
    set_addr(ctx, outer, old_addr, new_addr)?;

    // Quoted IPv4 header: its checksum moves with the address, and both
    // changes are part of the ICMP payload.
    let inner_check: [u8; 2] = ctx.load(err.inner_ip_off + 10).map_err(fail)?;
    let new_check = csum_update(inner_check, old_addr, new_addr);
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
    set_addr(ctx, side, old_addr, new_addr)
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
    let ip: *mut Ipv4Hdr = header(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `header`.
    unsafe {
        let (ttl, proto) = ((*ip).ttl, (*ip).protocol);
        if ttl <= 1 {
            return Ok(Ttl::Expired);
        }
        // TTL and protocol share one 16-bit word of the header checksum.
        (*ip).check = csum_update((*ip).check, [ttl, proto], [ttl - 1, proto]);
        (*ip).ttl = ttl - 1;
    }
    Ok(Ttl::Forward)
}
