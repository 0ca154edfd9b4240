//! Header layouts and bounds-checked access to packet bytes.
//!
//! Headers are byte arrays only (alignment 1), so a pointer at any packet
//! offset is valid to read once its bounds are checked.

use aya_ebpf::programs::{TcContext, XdpContext};
use ferry_common::DropReason;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPV4_MIN_HLEN: usize = 20;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    pub fn proto(&self) -> u16 {
        u16::from_be_bytes(self.proto)
    }
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// An ARP packet for IPv4 over Ethernet (RFC 826), the only kind ferry
/// accepts from containers.
#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

pub const ARP_HTYPE_ETHER: u16 = 1;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

impl ArpHdr {
    /// IPv4 over Ethernet, the only ARP flavour that makes sense here.
    #[inline(always)]
    pub fn is_ipv4_over_ethernet(&self) -> bool {
        u16::from_be_bytes(self.htype) == ARP_HTYPE_ETHER
            && u16::from_be_bytes(self.ptype) == ETH_P_IP
            && self.hlen == 6
            && self.plen == 4
    }

    #[inline(always)]
    pub fn oper(&self) -> u16 {
        u16::from_be_bytes(self.oper)
    }
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length in bytes.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.version_ihl & 0x0f) * 4
    }
}

/// The first four bytes of TCP and UDP headers.
#[repr(C)]
pub struct PortsHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// The ICMP echo header (request type 8, reply type 0).
#[repr(C)]
pub struct IcmpEchoHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
    pub seq: [u8; 2],
}

/// Where a TCP, UDP or ICMP echo header and its checksum are, and its
/// ports. For ICMP echo, `sport` is the echo id and `dport` is zero in both
/// directions, so both directions key the same way.
pub struct L4 {
    pub proto: u8,
    /// Offset of the L4 header from the start of the frame.
    pub off: usize,
    /// Offset of the L4 checksum from the start of the frame.
    pub csum_off: usize,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// TCP flags; `CT_SEEN` for UDP and ICMP echo (what conntrack records
    /// of a direction), 0 in a header an ICMP error quotes.
    pub tcp_flags: u8,
    /// The first fragment of a fragmented datagram (more fragments follow).
    pub first_fragment: bool,
    /// IPv4 identification, network byte order (keys the later fragments).
    pub ip_id: [u8; 2],
}

const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// The L4 header of an IPv4 packet, if it is a TCP, UDP or ICMP echo
/// packet (or the first fragment of one) whose header is in the linear
/// data. Later fragments and other protocols give `None`.
#[inline(always)]
pub fn l4_of(ctx: &TcContext, ip: *const Ipv4Hdr) -> Option<L4> {
    // SAFETY: the caller checked the IPv4 header's bounds.
    let (proto, ihl, frag, ip_id) = unsafe {
        (
            (*ip).protocol,
            (*ip).header_len(),
            u16::from_be_bytes((*ip).frag_off),
            (*ip).id,
        )
    };
    if frag & IP_OFFSET != 0 || ihl < IPV4_MIN_HLEN {
        return None;
    }
    let first_fragment = frag & IP_MF != 0;
    let off = ETH_HLEN + ihl;
    let csum_off = match proto {
        ferry_common::IPPROTO_TCP => off + 16,
        ferry_common::IPPROTO_UDP => off + 6,
        ferry_common::IPPROTO_ICMP => {
            let icmp: *const IcmpEchoHdr = ptr_at(ctx, off).ok()?;
            // SAFETY: bounds checked by `ptr_at`.
            let (kind, id) = unsafe { ((*icmp).kind, (*icmp).id) };
            if kind != 0 && kind != 8 {
                return None;
            }
            return Some(L4 {
                proto,
                off,
                csum_off: off + 2,
                sport: id,
                dport: [0; 2],
                tcp_flags: ferry_common::CT_SEEN,
                first_fragment,
                ip_id,
            });
        }
        _ => return None,
    };
    // The checksum field must be in the packet too.
    ptr_at::<[u8; 2]>(ctx, csum_off).ok()?;
    let ports: *const PortsHdr = ptr_at(ctx, off).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    let (sport, dport) = unsafe { ((*ports).sport, (*ports).dport) };
    let tcp_flags = if proto == ferry_common::IPPROTO_TCP {
        // Byte 13 of the TCP header; the checksum at +16 was bounds checked.
        let flags: *const u8 = ptr_at(ctx, off + 13).ok()?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { *flags }
    } else {
        ferry_common::CT_SEEN
    };
    Some(L4 {
        proto,
        off,
        csum_off,
        sport,
        dport,
        tcp_flags,
        first_fragment,
        ip_id,
    })
}

/// The key of a later fragment (offset > 0) of an IPv4 datagram.
#[inline(always)]
pub fn later_fragment_of(ip: *const Ipv4Hdr) -> Option<ferry_common::FragKey> {
    // SAFETY: the caller checked the IPv4 header's bounds.
    let (frag, saddr, daddr, id, proto) = unsafe {
        (
            u16::from_be_bytes((*ip).frag_off),
            (*ip).src,
            (*ip).dst,
            (*ip).id,
            (*ip).protocol,
        )
    };
    if frag & IP_OFFSET == 0 {
        return None;
    }
    Some(ferry_common::FragKey {
        saddr,
        daddr,
        id,
        proto,
        pad: 0,
    })
}

/// An ICMP error (destination unreachable, time exceeded) quoting a TCP,
/// UDP or ICMP echo packet: where its parts are, and the quoted flow.
pub struct IcmpError {
    /// Offset of the outer ICMP header.
    pub icmp_off: usize,
    /// Offset of the quoted IPv4 header.
    pub inner_ip_off: usize,
    /// The quoted packet's L4 header: its ports (for echo: the id in
    /// `sport`) and offsets, as `l4_of` would give them.
    pub inner: L4,
    pub inner_saddr: [u8; 4],
    pub inner_daddr: [u8; 4],
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// The ICMP error in this IPv4 packet, if it is one that quotes a flow ferry
/// can have translated (the quoted header without options, as routers send).
#[inline(always)]
pub fn icmp_error_of(ctx: &TcContext, ip: *const Ipv4Hdr) -> Option<IcmpError> {
    // SAFETY: the caller checked the IPv4 header's bounds.
    let (proto, ihl, frag) = unsafe { ((*ip).protocol, (*ip).header_len(), (*ip).frag_off) };
    if proto != ferry_common::IPPROTO_ICMP
        || u16::from_be_bytes(frag) & 0x3fff != 0
        || ihl < IPV4_MIN_HLEN
    {
        return None;
    }
    let icmp_off = ETH_HLEN + ihl;
    let icmp: *const IcmpEchoHdr = ptr_at(ctx, icmp_off).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    let kind = unsafe { (*icmp).kind };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner_ip_off = icmp_off + 8;
    let inner_ip: *const Ipv4Hdr = ptr_at(ctx, inner_ip_off).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    let (vihl, inner_proto, inner_saddr, inner_daddr) = unsafe {
        (
            (*inner_ip).version_ihl,
            (*inner_ip).protocol,
            (*inner_ip).src,
            (*inner_ip).dst,
        )
    };
    if vihl != 0x45 {
        return None;
    }
    let off = inner_ip_off + IPV4_MIN_HLEN;
    // Errors quote at least 8 bytes of L4: both ports, or echo type..id.
    let ports: *const PortsHdr = ptr_at(ctx, off).ok()?;
    ptr_at::<[u8; 8]>(ctx, off).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    let (a, b) = unsafe { ((*ports).sport, (*ports).dport) };
    let inner = match inner_proto {
        ferry_common::IPPROTO_TCP | ferry_common::IPPROTO_UDP => L4 {
            proto: inner_proto,
            off,
            csum_off: 0,
            sport: a,
            dport: b,
            tcp_flags: 0,
            first_fragment: false,
            ip_id: [0; 2],
        },
        // Echo: type, code, checksum, id: the id is bytes 4..6.
        ferry_common::IPPROTO_ICMP => {
            let echo: *const IcmpEchoHdr = ptr_at(ctx, off).ok()?;
            // SAFETY: bounds checked by `ptr_at`.
            let id = unsafe { (*echo).id };
            L4 {
                proto: inner_proto,
                off,
                csum_off: 0,
                sport: id,
                dport: [0; 2],
                tcp_flags: 0,
                first_fragment: false,
                ip_id: [0; 2],
            }
        }
        _ => return None,
    };
    Some(IcmpError {
        icmp_off,
        inner_ip_off,
        inner,
        inner_saddr,
        inner_daddr,
    })
}

/// A program context with packet data: tc's skb or XDP's buffer.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// The Ethernet and IPv4 headers of an IPv4 frame, with the first 8 bytes
/// past a minimal IPv4 header pulled into the linear data too (the ports);
/// `None` for any other frame or one too short for the headers.
#[inline(always)]
pub fn ipv4_frame(ctx: &TcContext) -> Option<(*mut EthHdr, *mut Ipv4Hdr)> {
    pull(ctx, ETH_HLEN + IPV4_MIN_HLEN + 8);
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    if unsafe { (*eth).proto() } != ETH_P_IP {
        return None;
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    if unsafe { (*ip).version() } != 4 {
        return None;
    }
    Some((eth, ip))
}

/// A pointer to a `T` at `offset` into the packet, after checking that the
/// whole `T` lies inside the linear data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(DropReason::Malformed);
    }
    Ok((start + offset) as *mut T)
}

/// Makes the first `len` bytes linear when they are not, so `ptr_at` can
/// reach them. Packets shorter than `len` stay as they are; `ptr_at` then
/// reports them as malformed.
#[inline(always)]
pub fn pull(ctx: &TcContext, len: usize) {
    if ctx.data() + len > ctx.data_end() {
        let _ignored = ctx.pull_data(len as u32);
    }
}

/// Compares two MAC addresses without a `memcmp` call (there is none in BPF).
#[inline(always)]
pub fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}
